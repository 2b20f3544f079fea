"""FeatureTap (forward hooks by module path) and the alignment head."""
import pytest
import torch
from torch import nn

from sstkd.distill import AlignHead, FeatureTap


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU())
        self.layer2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)

    def forward(self, x):
        return self.layer2(self.layer1(self.stem(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = Backbone()
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return {"out": self.head(self.backbone(x))}


class Wrapper(nn.Module):
    """What DistributedDataParallel looks like from the outside: the model sits in ``.module``."""

    def __init__(self, model):
        super().__init__()
        self.module = model

    def forward(self, x):
        return self.module(x)


def test_tap_captures_the_named_module_output_on_every_forward():
    net = Net()
    tap = FeatureTap(net, {"low": "backbone.layer1", "mid": "backbone.layer2"})
    x = torch.randn(2, 3, 16, 16)
    net(x)
    expected = net.backbone.layer1(net.backbone.stem(x))
    torch.testing.assert_close(tap.features["low"], expected)
    assert tap["mid"].shape == (2, 8, 4, 4)
    x2 = torch.randn(1, 3, 8, 8)
    net(x2)
    assert tap["low"].shape == (1, 6, 4, 4)  # refreshed by the new forward
    assert tap["low"].requires_grad  # not detached by default: the student's gradient flows
    tap.remove()


def test_tap_detach_option():
    net = Net()
    with FeatureTap(net, {"low": "backbone.layer1"}, detach=True) as tap:
        net(torch.randn(1, 3, 8, 8))
        assert not tap["low"].requires_grad


def test_unknown_path_names_the_path_and_registers_nothing():
    net = Net()
    with pytest.raises(ValueError, match="backbone.layer9"):
        FeatureTap(net, {"low": "backbone.layer1", "bad": "backbone.layer9"})
    assert all(len(m._forward_hooks) == 0 for m in net.modules())


def test_bad_arguments():
    with pytest.raises(TypeError, match="model"):
        FeatureTap("not a model", {"low": "x"})
    with pytest.raises(TypeError, match="taps"):
        FeatureTap(Net(), {})
    with pytest.raises(TypeError, match="taps"):
        FeatureTap(Net(), {"low": 3})


def test_feature_missing_before_forward_is_a_clear_key_error():
    tap = FeatureTap(Net(), {"low": "backbone.layer1"})
    with pytest.raises(KeyError, match="forward"):
        tap["low"]
    with pytest.raises(KeyError, match="no tap named"):
        tap["other"]


def test_remove_and_context_manager_unregister_the_hooks():
    net = Net()
    tap = FeatureTap(net, {"low": "backbone.layer1"})
    assert len(net.backbone.layer1._forward_hooks) == 1
    tap.remove()
    tap.remove()  # idempotent
    assert len(net.backbone.layer1._forward_hooks) == 0 and not tap.active
    net(torch.randn(1, 3, 8, 8))
    assert "low" not in tap.features
    with FeatureTap(net, {"low": "backbone.layer1"}) as tap2:
        net(torch.randn(1, 3, 8, 8))
        assert "low" in tap2.features
    assert len(net.backbone.layer1._forward_hooks) == 0


def test_ddp_style_wrapping_resolves_through_module():
    net = Net()
    wrapped = Wrapper(net)
    x = torch.randn(2, 3, 8, 8)
    with FeatureTap(wrapped, {"low": "backbone.layer1"}) as tap:
        wrapped(x)
        torch.testing.assert_close(tap["low"], net.backbone.layer1(net.backbone.stem(x)))
    # a "module."-prefixed path (as in a DDP state dict) works on the unwrapped model too
    with FeatureTap(net, {"low": "module.backbone.layer1"}) as tap:
        net(x)
        assert tap["low"].shape == (2, 6, 4, 4)
    with pytest.raises(ValueError, match="nope"):
        FeatureTap(wrapped, {"low": "nope"})


def test_align_head_identity_and_conv():
    same = AlignHead(6, 6)
    assert same.is_identity and not list(same.parameters())
    x = torch.randn(2, 6, 4, 4)
    assert same(x) is x
    conv = AlignHead(4, 6)
    assert not conv.is_identity
    assert conv(torch.randn(2, 4, 4, 4)).shape == (2, 6, 4, 4)
    assert not AlignHead(6, 6, mode="conv").is_identity
    with pytest.raises(ValueError, match="identity"):
        AlignHead(4, 6, mode="identity")
    with pytest.raises(ValueError, match="align"):
        AlignHead(4, 6, mode="bogus")
    with pytest.raises(ValueError, match="s_low"):
        conv(torch.randn(2, 5, 4, 4))
