"""mIoU bookkeeping, whole / sliding-window / flip / multi-scale inference, the eval loop and `sstkd eval`."""
import json
import math

import pytest
import torch
from torch import nn

from sstkd.engine.evaluator import SegMetrics, evaluate, format_metrics_table
from sstkd.engine.inference import predict, slide_inference, whole_inference


def test_miou_hand_computed():
    gt = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    m = SegMetrics(3)
    m.update(pred, gt)
    r = m.compute()
    # class 0: I=1, U=2; class 1: I=2, U=3; class 2: I=1, U=1 (the ignored pixel counts nowhere)
    assert r["IoU"] == pytest.approx([0.5, 2 / 3, 1.0])
    assert r["mIoU"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert r["pixel_acc"] == pytest.approx(4 / 5) and r["pixels"] == 5
    assert r["acc"] == pytest.approx([0.5, 1.0, 1.0])
    assert r["intersection"] == [1, 2, 1] and r["union"] == [2, 3, 1]


def test_miou_is_dataset_level_and_skips_absent_classes():
    m = SegMetrics(4)
    m.update(torch.tensor([[[0, 0, 0, 0]]]), torch.tensor([[[0, 0, 0, 1]]]))  # per-image mIoU would be (.75 + 0) / 2
    m.update(torch.tensor([[[1, 1, 1, 1]]]), torch.tensor([[[1, 1, 1, 1]]]))  # per-image 1.0
    r = m.compute()
    assert r["IoU"][:2] == pytest.approx([3 / 4, 4 / 5])
    assert math.isnan(r["IoU"][2]) and math.isnan(r["IoU"][3])  # never seen: excluded from the mean
    assert r["mIoU"] == pytest.approx((3 / 4 + 4 / 5) / 2)
    # scores are arg-maxed
    scores = torch.zeros(1, 4, 1, 4)
    scores[:, 2] = 1.0
    m.reset()
    m.update(scores, torch.tensor([[[2, 2, 255, 3]]]))
    assert m.compute()["intersection"] == [0, 0, 2, 0]


def test_perfect_prediction():
    target = torch.randint(0, 5, (2, 8, 8))
    target[0, 0, :3] = 255
    m = SegMetrics(5)
    m.update(target.clone().clamp(max=4), target)
    r = m.compute()
    assert r["mIoU"] == 1.0 and r["pixel_acc"] == 1.0


def test_metrics_errors():
    m = SegMetrics(3)
    with pytest.raises(ValueError, match="target"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="shape"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="pred"):
        m.update(torch.zeros(1, 5, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        SegMetrics(0)


def test_all_reduce_single_process_group(tmp_path):
    import torch.distributed as dist

    m = SegMetrics(2)
    m.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 0]]]))
    m.all_reduce()  # no process group: no-op
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        m.all_reduce()
    finally:
        dist.destroy_process_group()
    assert m.confusion.tolist() == [[1, 1], [0, 0]]


def _conv1x1(cin=3, k=4, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(cin, k, 1).eval()


@pytest.mark.parametrize("size,crop,stride", [((37, 45), 16, 11), ((10, 12), 16, 8), ((32, 32), (16, 20), (8, 10))])
def test_slide_equals_whole_for_translation_equivariant_model(size, crop, stride):
    model = _conv1x1()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        whole = whole_inference(model, x)
        slide = slide_inference(model, x, crop, stride)
    assert slide.shape == whole.shape == (2, 4, *size)
    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-6)


def test_slide_averages_overlaps():
    # A model whose output depends on the window position shows the averaging: a constant-one model
    # with a per-window offset would break equality, so check the count map via a position-sensitive model.
    class Corner(nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 1, *x.shape[-2:])
            out[..., 0, 0] = 1.0  # marks each window's top-left pixel
            return out

    x = torch.zeros(1, 3, 8, 8)
    out = slide_inference(Corner(), x, 4, 2)
    # windows start at 0, 2, 4 in each direction; pixel (2, 2) is covered by 4 windows, one starts there
    assert out[0, 0, 2, 2] == pytest.approx(1 / 4)
    assert out[0, 0, 0, 0] == 1.0 and out[0, 0, 1, 1] == 0.0
    with pytest.raises(ValueError, match="stride"):
        slide_inference(Corner(), x, 4, 5)


def test_predict_flip_and_scales():
    model = _conv1x1()
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        base = whole_inference(model, x).softmax(1)
        # a 1x1 conv is flip-equivariant: flipping adds nothing
        torch.testing.assert_close(predict(model, x, flip=True), base, rtol=1e-5, atol=1e-6)
        ms = predict(model, x, mode="slide", crop_size=16, stride=8, flip=True, scales=(0.75, 1.0, 1.5))
    assert ms.shape == (1, 4, 24, 24)
    torch.testing.assert_close(ms.sum(1), torch.ones(1, 24, 24))
    with pytest.raises(ValueError, match="mode"):
        predict(model, x, mode="tiles")
    with pytest.raises(ValueError, match="crop_size"):
        predict(model, x, mode="slide")


class _OneHotData(torch.utils.data.Dataset):
    """Images whose channel c is 1 where the label is c: an identity 1x1 conv segments them perfectly."""

    def __init__(self, n=3, k=3, size=(20, 28)):
        g = torch.Generator().manual_seed(0)
        self.labels = torch.randint(0, k, (n, *size), generator=g)
        self.labels[:, :2, :2] = 255
        self.k = k

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        lbl = self.labels[i]
        img = torch.stack([(lbl == c).float() for c in range(self.k)])
        return img, lbl


def _identity_model(k=3):
    model = nn.Conv2d(k, k, 1)
    with torch.no_grad():
        model.weight.copy_(torch.eye(k).view(k, k, 1, 1))
        model.bias.zero_()
    return model


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_evaluate_perfect_model(mode):
    model = _identity_model().train()
    loader = torch.utils.data.DataLoader(_OneHotData(), batch_size=2)
    r = evaluate(model, loader, 3, mode=mode, crop_size=12, stride=8, flip=True)
    assert r["mIoU"] == 1.0 and r["pixels"] == 3 * (20 * 28 - 4)
    assert model.training  # restored
    with torch.no_grad():
        model.weight.copy_(torch.eye(3)[[1, 2, 0]].view(3, 3, 1, 1))  # always wrong
    assert evaluate(model, loader, 3)["mIoU"] == 0.0
    with pytest.raises(ValueError, match="num_classes"):
        evaluate(model, loader, 4)


def test_metrics_table():
    m = SegMetrics(3)
    m.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 1]]]))
    table = format_metrics_table(m.compute(), ["road", "sky", "car"])
    assert "road" in table and "n/a" in table and "mIoU 100.00" in table


def test_eval_cli_config_free(tmp_path, capsys):
    from sstkd.cli import main as cli_main
    from sstkd.models import build_model

    model = build_model("pspnet_resnet18", 4, base_width=8)
    ckpt = tmp_path / "student.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    out_json = tmp_path / "metrics.json"
    rc = cli_main(["eval", "--checkpoint", str(ckpt), "--model", "pspnet_resnet18", "--num-classes", "4",
                   "--base-width", "8", "--dataset", "synthetic", "--data-option", "num_images=2",
                   "--data-option", "size=32", "--data-option", "num_classes=4", "--workers", "0",
                   "--mode", "slide", "--crop-size", "24", "--stride", "16", "--device", "cpu",
                   "--json", str(out_json)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "grating_90" in printed and "mIoU" in printed
    saved = json.loads(out_json.read_text())
    assert len(saved["IoU"]) == 4 and saved["pixels"] == 2 * 32 * 32
    # the model must match the checkpoint: a one-line error naming it, exit 2
    assert cli_main(["eval", "--checkpoint", str(ckpt), "--model", "deeplabv3_resnet18", "--num-classes", "4",
                     "--base-width", "8", "--dataset", "synthetic", "--data-option", "num_classes=4",
                     "--data-option", "num_images=1", "--workers", "0"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_eval_cli_with_config(tmp_path, capsys):
    from sstkd.cli import main as cli_main
    from sstkd.models import build_model

    model = build_model("deeplabv3_mobilenetv2", 3, base_width=16, output_stride=16, aux=False)
    ckpt = tmp_path / "student.pt"
    torch.save({"student": model.state_dict()}, ckpt)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {name: deeplabv3_mobilenetv2, base_width: 16, output_stride: 16}\n"
                   "data: {name: synthetic, num_workers: 0, options: {num_images: 4, size: 32, num_classes: 3},\n"
                   "       val_options: {num_images: 2}}\n"
                   "eval: {mode: whole, num_workers: 0}\n")
    assert cli_main(["eval", "--config", str(cfg), "--checkpoint", str(ckpt), "--device", "cpu",
                     "eval.mode=slide", "eval.crop_size=[24, 24]", "eval.stride=[16, 16]"]) == 0
    out = capsys.readouterr().out
    assert "mode=slide" in out
    assert "(2 images" in out  # the validation split's options, as the trainer evaluates it
