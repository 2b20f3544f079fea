"""Backbones, heads, segmentors, the builder and weight loading (tiny widths, small inputs)."""
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from sstkd.models import (
    MODELS,
    MobileNetV2,
    build_model,
    convert_sync_batchnorm,
    load_backbone_weights,
    load_checkpoint,
    model_report,
    resnet18,
    resnet50,
    torchvision_to_stages,
)

TINY = 8


def _check_model(name, output_stride, size=32):
    model = build_model(name, 5, base_width=TINY, output_stride=output_stride)
    x = torch.randn(2, 3, size, size)
    model.train()
    out = model(x)
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == (2, 5, size, size) and out["aux"].shape == (2, 5, size, size)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert set(out) == {"out"} and out["out"].shape == (2, 5, size, size)


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_outputs(name, output_stride):
    _check_model(name, output_stride)


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_backbone_strides(name, output_stride):
    model = build_model(name, 5, base_width=TINY, output_stride=output_stride, aux=False).eval()
    with torch.no_grad():
        c1, c2, c3, c4 = model.backbone(torch.randn(1, 3, 64, 64))
    assert c1.shape[-2:] == (16, 16)  # layer1 is the stride-4 stage
    assert c2.shape[-2:] == (8, 8)
    deep = 64 // output_stride
    assert c3.shape[-2:] == (deep, deep) and c4.shape[-2:] == (deep, deep)
    assert [c.shape[1] for c in (c1, c2, c3, c4)] == list(model.backbone.channels)
    for k in range(1, 5):
        assert isinstance(getattr(model.backbone, f"layer{k}"), nn.Module)


def test_standard_width_channels():
    # Channel counts of the real networks (the SSTKD taps): R18 layer1 = 64, R101 = 256, MNv2 = 24.
    with torch.device("meta"):  # no memory, no init cost
        assert resnet18().channels == (64, 128, 256, 512)
        assert build_model("pspnet_resnet101", 2, aux=False).backbone.channels == (256, 512, 1024, 2048)
        assert MobileNetV2().channels == (24, 32, 96, 320)


def test_no_aux_and_odd_input_size():
    model = build_model("deeplabv3_resnet18", 3, base_width=TINY, aux=False).train()
    out = model(torch.randn(2, 3, 50, 70))
    assert set(out) == {"out"} and out["out"].shape == (2, 3, 50, 70)


def test_backward_reaches_layer1():
    model = build_model("pspnet_resnet18", 3, base_width=TINY)
    out = model(torch.randn(2, 3, 32, 32))
    (out["out"].mean() + 0.4 * out["aux"].mean()).backward()
    assert model.backbone.layer1[0].conv1.weight.grad.abs().sum() > 0


def test_dilation_layout():
    bb = resnet50(base_width=TINY, output_stride=8)
    assert bb.layer3[0].conv2.stride == (1, 1) and bb.layer3[0].conv2.dilation == (1, 1)
    assert bb.layer3[1].conv2.dilation == (2, 2)
    assert bb.layer4[0].conv2.dilation == (2, 2) and bb.layer4[1].conv2.dilation == (4, 4)
    bb16 = resnet18(base_width=TINY, output_stride=16)
    assert bb16.layer3[0].conv1.stride == (2, 2)
    assert bb16.layer4[0].conv1.stride == (1, 1) and bb16.layer4[1].conv1.dilation == (2, 2)


def test_deep_stem_keys_and_strides():
    bb = resnet18(base_width=TINY, deep_stem=True, output_stride=8)
    keys = bb.state_dict().keys()
    for k in ("conv1.weight", "bn1.weight", "conv2.weight", "bn2.weight", "conv3.weight", "bn3.weight",
              "layer1.0.downsample.0.weight"):
        assert k in keys
    assert bb.conv1.weight.shape == (TINY, 3, 3, 3) and bb.conv3.weight.shape == (2 * TINY, TINY, 3, 3)
    feats = bb(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 8, 8]


def test_parameter_counts_match_torchvision():
    # torchvision: resnet18 11,689,512, resnet50 25,557,032, mobilenet_v2 3,504,872 (1000-class classifiers).
    with torch.device("meta"):
        assert sum(p.numel() for p in resnet18(num_classes=1000).parameters()) == 11_689_512
        assert sum(p.numel() for p in resnet18().parameters()) == 11_689_512 - 513_000  # without fc
        assert sum(p.numel() for p in resnet50(num_classes=1000).parameters()) == 25_557_032
        assert sum(p.numel() for p in MobileNetV2(num_classes=1000).parameters()) == 3_504_872


def test_model_report_macs():
    rep = model_report(resnet18(num_classes=1000), (3, 224, 224))
    assert rep["params"] == 11_689_512 and rep["trainable_params"] == 11_689_512
    assert abs(rep["macs"] - 1.814e9) / 1.814e9 < 0.005  # the published 1.81 GMACs of ResNet-18
    assert rep["flops"] == 2 * rep["macs"] and rep["input_shape"] == (1, 3, 224, 224)
    # MACs scale with the batch
    tiny = build_model("pspnet_resnet18", 2, base_width=TINY)
    assert model_report(tiny, (2, 3, 32, 32))["macs"] == 2 * model_report(tiny, (1, 3, 32, 32))["macs"]
    assert tiny.training  # restored
    with pytest.raises(ValueError, match="input_shape"):
        model_report(tiny, (3, 32))


def test_build_model_errors():
    with pytest.raises(ValueError, match="pspnet_resnet18"):
        build_model("unet", 3)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("pspnet_resnet18", 0)
    with pytest.raises(ValueError, match="output_stride"):
        build_model("pspnet_resnet18", 3, output_stride=4)
    with pytest.raises(ValueError, match="base_width"):
        build_model("pspnet_resnet18", 3, base_width=0)
    with pytest.raises(ValueError, match="norm_layer"):
        build_model("pspnet_resnet18", 3, norm_layer="layernorm")


def test_forward_rejects_bad_input():
    model = build_model("pspnet_resnet18", 3, base_width=TINY).eval()
    with pytest.raises(ValueError, match="x"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(TypeError, match="x"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.int64))


def test_backbone_weight_roundtrip(tmp_path):
    # An "ImageNet" checkpoint in torchvision's layout: the classifier ResNet with its fc.
    src = resnet18(base_width=TINY, num_classes=10)
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    model = build_model("pspnet_resnet18", 3, base_width=TINY, pretrained_backbone=str(path))
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k
    report = load_backbone_weights(model.backbone, str(path))
    assert report.ok and sorted(report.ignored) == ["fc.bias", "fc.weight"]
    # {"state_dict": ...} wrappers and DDP "module." prefixes are unwrapped too.
    wrapped = {"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}
    assert load_backbone_weights(resnet18(base_width=TINY), wrapped).ok
    # A full segmentation checkpoint initializes a backbone from its backbone.* keys.
    seg = build_model("deeplabv3_resnet18", 3, base_width=TINY)
    fresh = resnet18(base_width=TINY)
    report = load_backbone_weights(fresh, {"model": seg.state_dict()})
    assert report.ok and any(k.startswith("head.") for k in report.ignored)
    assert torch.equal(fresh.layer4[1].conv2.weight, seg.backbone.layer4[1].conv2.weight)


# In-place random fills (torch.nn.init and Tensor methods; nn.init's calls are seen at the outermost one).
_RANDOM_FILLS = {"uniform_", "normal_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "xavier_uniform_",
                 "xavier_normal_", "orthogonal_", "sparse_", "random_", "bernoulli_", "exponential_"}


class _CountDraws(TorchFunctionMode):
    """Counts the random values drawn into real (non-meta) tensors. (A function mode, not a dispatch
    mode: under a dispatch mode, meta-device ops take torch's Python decompositions, which import
    torch._dynamo: seconds.)"""

    def __init__(self):
        super().__init__()
        self.drawn = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in _RANDOM_FILLS:
            tensor = args[0] if args else kwargs["tensor"]
            if not tensor.is_meta:
                self.drawn += tensor.numel()
        return func(*args, **kwargs)


def test_pretrained_backbone_skips_random_init():
    # A strict load fills every backbone tensor, so only the heads draw random values; the backbone
    # holds copies of the checkpoint (training the student never writes into the caller's tensors).
    src = resnet18(base_width=TINY, num_classes=10).state_dict()
    src = {k: v for k, v in src.items() if not k.endswith("num_batches_tracked")}  # as old checkpoints
    with _CountDraws() as count:
        model = build_model("pspnet_resnet18", 3, base_width=TINY, pretrained_backbone=src)
    heads = sum(p.numel() for head in (model.head, model.aux_head) for m in head.modules()
                if isinstance(m, nn.Conv2d) for p in m.parameters())
    assert count.drawn == heads  # (a randomly initialized backbone draws its convs twice more)
    own = model.backbone.state_dict()
    assert not any(t.is_meta for t in own.values())
    assert set(src) - set(own) == {"fc.weight", "fc.bias"}
    assert all(torch.equal(own[k], src[k]) and own[k].data_ptr() != src[k].data_ptr() for k in own if k in src)
    assert all(int(own[k]) == 0 for k in own if k.endswith("num_batches_tracked"))
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in model.backbone.parameters())
    out = model.train()(torch.randn(2, 3, 32, 32))
    out["out"].mean().backward()
    assert model.backbone.conv1.weight.grad is not None
    # MobileNetV2 too; a half-precision checkpoint is loaded in the model's dtype.
    mnv2 = {k: v.half() for k, v in MobileNetV2(width_mult=0.25).state_dict().items()}
    model = build_model("deeplabv3_mobilenetv2", 3, base_width=16, pretrained_backbone=mnv2)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    own = model.backbone.state_dict()
    assert all(torch.equal(own[k].half(), v) for k, v in mnv2.items() if v.is_floating_point())


def test_meta_backbone_must_be_filled():
    sd = resnet18(base_width=TINY).state_dict()
    del sd["layer2.0.bn1.running_mean"]
    with torch.device("meta"):
        empty = resnet18(base_width=TINY)
    with pytest.raises(ValueError, match=r"meta device.*layer2\.0\.bn1\.running_mean"):
        load_backbone_weights(empty, sd, strict=False)
    with pytest.raises(ValueError, match=r"missing: layer2\.0\.bn1\.running_mean"):  # strict: the usual error
        load_backbone_weights(empty, sd)
    # strict=False builds a randomly initialized backbone and loads what matches, as before.
    model = build_model("pspnet_resnet18", 3, base_width=TINY, pretrained_backbone=sd, strict=False)
    assert torch.equal(model.backbone.conv1.weight, sd["conv1.weight"])
    assert not model.backbone.layer2[0].bn1.running_mean.is_meta


def test_backbone_weight_errors(tmp_path):
    sd = resnet18(base_width=TINY).state_dict()
    del sd["layer1.0.conv1.weight"]
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    target = resnet18(base_width=TINY)
    before = target.conv1.weight.clone()
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight") as err:
        load_backbone_weights(target, str(path))
    assert "extra.weight" in str(err.value)
    assert torch.equal(target.conv1.weight, before)  # nothing loaded on a strict failure
    report = load_backbone_weights(target, str(path), strict=False)
    assert report.missing == ["layer1.0.conv1.weight"] and report.unexpected == ["extra.weight"]
    assert torch.equal(target.conv1.weight, sd["conv1.weight"])
    # A standard-stem checkpoint does not fit a deep-stem backbone: shape mismatch named.
    with pytest.raises(ValueError, match="conv1.weight: checkpoint"):
        load_backbone_weights(resnet18(base_width=TINY, deep_stem=True), str(path), strict=True)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_backbone_weights(target, str(tmp_path / "nope.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_backbone_weights(target, str(tmp_path / "garbage.pth"))


def _to_torchvision_layout(sd):
    """Inverse of torchvision_to_stages, for tests: stage keys back to features.{i}."""
    from sstkd.models.mobilenetv2 import STAGE_SLICES

    out = {}
    for k, v in sd.items():
        if k.startswith("layer"):
            stage, idx, rest = k[len("layer"):].split(".", 2)
            out[f"features.{STAGE_SLICES[int(stage) - 1][0] + int(idx)}.{rest}"] = v
        elif k.startswith("last_conv."):
            out["features.18." + k[len("last_conv."):]] = v
        else:
            out[k] = v
    return out


def test_mobilenetv2_torchvision_layout(tmp_path):
    src = MobileNetV2(width_mult=0.25, num_classes=10)
    tv = _to_torchvision_layout(src.state_dict())
    # torchvision's keys: stem Conv2dNormActivation, t=1 block (no expansion), expanded blocks, last conv, fc.
    assert tv["features.0.0.weight"].shape[1:] == (3, 3, 3)
    assert tv["features.1.conv.0.0.weight"].shape[1:] == (1, 3, 3)  # depthwise
    assert tv["features.1.conv.1.weight"].shape[2:] == (1, 1)
    assert tv["features.2.conv.0.0.weight"].shape[2:] == (1, 1)  # 1x1 expansion
    assert tv["features.17.conv.3.weight"].dim() == 1  # last block's projection BN
    assert "features.18.0.weight" in tv and "classifier.1.weight" in tv
    assert torchvision_to_stages(tv).keys() == src.state_dict().keys()
    path = tmp_path / "mnv2.pth"
    torch.save(tv, path)
    model = build_model("deeplabv3_mobilenetv2", 4, base_width=16, pretrained_backbone=str(path))
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k


def test_mobilenetv2_dilation():
    bb = MobileNetV2(width_mult=0.25, output_stride=8)
    # layer3's first block loses its stride and keeps dilation 1, later blocks dilate by 2; layer4 by 4.
    assert bb.layer3[0].conv[1][0].stride == (1, 1) and bb.layer3[0].conv[1][0].dilation == (1, 1)
    assert bb.layer3[1].conv[1][0].dilation == (2, 2)
    assert bb.layer4[0].conv[1][0].dilation == (2, 2) and bb.layer4[1].conv[1][0].dilation == (4, 4)


def test_load_checkpoint_formats(tmp_path):
    src = build_model("deeplabv3_resnet18", 3, base_width=TINY)
    sd = src.state_dict()
    for i, obj in enumerate([sd, {"model": sd, "iteration": 3}, {"student": sd},
                             {"model": {f"module.{k}": v for k, v in sd.items()}}]):
        path = tmp_path / f"ckpt{i}.pt"
        torch.save(obj, path)
        dst = build_model("deeplabv3_resnet18", 3, base_width=TINY)
        assert load_checkpoint(dst, str(path)).ok
        for k, v in dst.state_dict().items():
            assert torch.equal(v, sd[k]), k
    wrong = build_model("deeplabv3_resnet18", 5, base_width=TINY)
    with pytest.raises(ValueError, match="shape mismatches"):
        load_checkpoint(wrong, str(tmp_path / "ckpt0.pt"))
    torch.save({"epoch": 1}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="no state dict"):
        load_checkpoint(wrong, str(tmp_path / "empty.pt"))


def test_convert_sync_batchnorm():
    model = build_model("pspnet_resnet18", 2, base_width=TINY)
    assert convert_sync_batchnorm(model) is model  # single process: unchanged
    synced = convert_sync_batchnorm(model, force=True)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())
