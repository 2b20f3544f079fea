"""The field's checkpoints load strictly and reproduce the peers' own outputs.

Fixtures: ``../shared/testdata/interop`` (beside the repository; see its README): for each peer model the
exact state-dict layout, a synthetic weight rule and the outputs the peer's own code computed with those
weights. Every array is matched to 1e-4 of the reference's max |value| (the README's criterion),
including the ``gain1__`` (activations that stay small) and ``probe_`` (ceil-mode) variants.
"""
import collections
import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from sstkd.models import FLAVORS, build_model, convert_state_dict, from_pretrained, load_backbone_weights
from sstkd.models.convert import detect_format, load_teacher
from sstkd.models.mobilenetv2 import MobileNetV2
from sstkd.models.resnet import resnet18, resnet101

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "testdata" / "interop"
TOL = 1e-4

# Run in this order: fixtures that share layers (the same key names: CIRKD v1/v2, torchvision/mmseg
# "backbone.*", IFVD and the deep-stem/torchvision ImageNet ResNets) follow one another, so that the
# cache of drawn weights (_DRAWN) serves them: 351 M weights drawn for the file instead of 400 M.
SEGMENTATION = {  # fixture -> (format, model name, flavor)
    "cirkd_v1_deeplabv3_resnet101": ("cirkd", "deeplabv3_resnet101", "cirkd_v1"),
    "cirkd_v2_deeplabv3_resnet101": ("cirkd", "deeplabv3_resnet101", "cirkd_v2"),
    "cirkd_v1_deeplabv3_resnet18": ("cirkd", "deeplabv3_resnet18", "cirkd_v1"),
    "cirkd_v2_deeplabv3_resnet18": ("cirkd", "deeplabv3_resnet18", "cirkd_v2"),
    "tv_deeplabv3_resnet101": ("torchvision", "deeplabv3_resnet101", "torchvision"),
    "mmseg_deeplabv3_r101-d8": ("mmseg", "deeplabv3_resnet101", "mmseg"),
    "mmseg_pspnet_r101-d8": ("mmseg", "pspnet_resnet101", "mmseg"),
    "mmseg_pspnet_r101b-d8": ("mmseg", "pspnet_resnet101", "mmseg_b"),
    "mmseg_pspnet_r18-d8": ("mmseg", "pspnet_resnet18", "mmseg"),
    "ifvd_pspnet_resnet18": ("ifvd", "pspnet_resnet18", "ifvd"),
    "ifvd_pspnet_resnet101": ("ifvd", "pspnet_resnet101", "ifvd"),
}
IMAGENET = ("cirkd_resnet101_v1s_imagenet", "tv_resnet101", "tv_resnet18", "cirkd_resnet18_v1s_imagenet",
            "tv_mobilenet_v2")


def _cases(names):
    # ResNet-101 cases take a few seconds each (mostly generating 45-87 M synthetic weights): marked slow.
    return [pytest.param(n, marks=pytest.mark.slow) if "101" in n else n for n in names]


def _load(name):
    path = DATA / f"{name}.npz"
    assert path.is_file(), f"missing interop fixture {path} (the repository expects ../shared beside it)"
    z = np.load(path)
    return z, json.loads(str(z["shapes"])), json.loads(str(z["meta"]))


_SCRATCH = np.empty(0)


def _scratch(shape):
    """A float64 array of ``shape`` over one reused buffer: drawing 45-87 M weights into fresh
    memory costs more in page faults than the draw itself."""
    global _SCRATCH
    n = int(np.prod(shape))
    if _SCRATCH.size < n:
        _SCRATCH = np.empty(n)
    return _SCRATCH[:n].reshape(shape)


# Arrays of the rule by (key, shape, kind, gains): the fixtures share most of their layers (the same
# ResNet-101 backbone under one naming in 2-4 of them), and the rule seeds each array by its key, so
# a shared layer is drawn once. Bounded to about the largest fixture (least recently used go first).
# The arrays are shared, not copied: a model that holds them (loaded with assign=True) must not write
# into them, and every use is checked against the fixture's digest (_weights), so one that did would
# fail loudly.
_DRAWN: "collections.OrderedDict[tuple, list]" = collections.OrderedDict()
_DRAWN_MAX_ELEMENTS = 90_000_000


def _rule_arrays(k, s, kind, gains):
    rng = np.random.default_rng(zlib.crc32(k.encode()))
    if kind == "num_batches_tracked":
        return [np.zeros(s, np.int64) for _ in gains]
    if kind == "running_mean":
        return [(0.1 * rng.standard_normal(s)).astype(np.float32)] * len(gains)
    if kind == "running_var":
        return [(0.5 + rng.random(s)).astype(np.float32)] * len(gains)
    if kind == "norm_weight":
        return [(1 + 0.1 * rng.standard_normal(s)).astype(np.float32)] * len(gains)
    if kind == "bias":
        return [(0.1 * rng.standard_normal(s)).astype(np.float32)] * len(gains)
    draw = rng.standard_normal(out=_scratch(s))
    fan_in = np.prod(s[1:]) if len(s) > 1 else s[0]
    # (draw * std).astype(float32), without the float64 temporary: the same bits
    return [np.multiply(draw, np.sqrt(g / fan_in), out=np.empty(s, np.float32), casting="same_kind")
            for g in gains]


def make_weights(keys, shapes, kinds, gains=(2.0, 1.0)):
    """The fixtures' weight rule (README "Weight rule") for each gain, as numpy arrays in key order.

    One random draw per key serves every gain (only the conv/linear std depends on it).
    """
    wanted = {(str(k), tuple(shapes[k]), str(kind), tuple(gains)): k for k, kind in zip(keys, kinds)}
    # Make room first (the oldest arrays this fixture does not use), so that the memory held never
    # exceeds the bound: on a VM, every new page the process touches costs about a random draw.
    size = sum(a[0].size for a in _DRAWN.values()) + sum(
        int(np.prod(key[1])) for key in wanted if key not in _DRAWN)
    for key in [key for key in _DRAWN if key not in wanted]:
        if size <= _DRAWN_MAX_ELEMENTS:
            break
        size -= _DRAWN.pop(key)[0].size
    sds = [{} for _ in gains]
    for key, k in wanted.items():
        arrays = _DRAWN.pop(key, None)
        if arrays is None:
            arrays = _rule_arrays(*key)
        _DRAWN[key] = arrays
        for sd, a in zip(sds, arrays):
            sd[k] = a
    return sds


@pytest.fixture(scope="module", autouse=True)
def _forget_drawn_weights():
    yield
    _DRAWN.clear()


def _weights(z, shapes, meta):
    """(main-rule, gain1) state dicts, each checked against the fixture's digest of the rule."""
    out = []
    for sd, digest_key in zip(make_weights(z["keys"], shapes, z["kinds"]), ("weights_sha256", "gain1_weights_sha256")):
        h = hashlib.sha256()
        for a in sd.values():
            h.update(np.ascontiguousarray(a).data)
        assert h.hexdigest() == meta[digest_key], "the weight rule differs from the fixture's"
        out.append({k: torch.from_numpy(v) for k, v in sd.items()})
    return out


def _compare(z, got, names):
    """Every stored array in ``names`` (and its ``__chmean``) against ``got``, by the README's criterion."""
    checked = []
    for name in names:
        if name not in z.files:
            continue
        assert name in got, f"no output for {name}"
        g = got[name].detach().double().numpy()
        ref = z[name]
        if g.shape != ref.shape:  # the crop rule
            if f"{name}__chmean" in z.files:
                chm = z[f"{name}__chmean"]
                err = np.abs(g.mean(axis=(2, 3)) - chm).max()
                assert err <= TOL * np.abs(chm).max(), f"{name}__chmean: {err:.3g} vs max {np.abs(chm).max():.3g}"
            g = g[:1, :19, :64, :64]
        assert g.shape == ref.shape, f"{name}: shape {g.shape} vs {ref.shape}"
        err = np.abs(g - ref).max()
        assert err <= TOL * np.abs(ref).max(), f"{name}: max error {err:.3g}, reference max {np.abs(ref).max():.3g}"
        checked.append(name)
    return checked


def _segmentor_outputs(model, x):
    """Stage outputs, head input, stride-8 logits and the model's own full-resolution outputs."""
    got, hooks = {}, []
    for i in range(1, 5):
        hooks.append(getattr(model.backbone, f"layer{i}").register_forward_hook(
            lambda m, inp, out, i=i: got.__setitem__(f"layer{i}", out)))
    hooks.append(model.head.classifier.register_forward_hook(
        lambda m, inp, out: got.update(logits=out, head_feat=inp[0])))
    hooks.append(model.aux_head.classifier.register_forward_hook(
        lambda m, inp, out: got.__setitem__("aux_logits", out)))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    assert set(out) == {"out", "aux"}
    assert out["out"].shape[-2:] == x.shape[-2:] and out["aux"].shape[-2:] == x.shape[-2:]
    got["out"], got["aux_out"] = out["out"], out["aux"]
    return got


@pytest.mark.parametrize("name", _cases(SEGMENTATION))
def test_segmentation_checkpoint_reproduces_peer(name):
    z, shapes, meta = _load(name)
    fmt, model_name, flavor = SEGMENTATION[name]
    sd, sd_gain1 = _weights(z, shapes, meta)
    assert detect_format(sd) == fmt
    model = from_pretrained(sd)  # format "auto"
    assert (model.source_format, model.name, model.flavor) == (fmt, model_name, flavor)
    assert model.align_corners == (fmt in ("cirkd", "ifvd"))  # as the source evaluates
    x = torch.from_numpy(z["x"])
    names = ("layer1", "layer2", "layer3", "layer4", "logits", "aux_logits", "head_feat", "out", "aux_out")
    checked = _compare(z, _segmentor_outputs(model, x), names)
    assert {"layer1", "logits", "aux_logits", "out"} <= set(checked)
    # layer1 is the stride-4 stage: 97 x 129 -> 25 x 33.
    assert tuple(meta["arrays"]["layer1"]["full_shape"][-2:]) == (25, 33)

    probe = _segmentor_outputs(model, torch.from_numpy(z["probe_x"]))
    assert _compare(z, {f"probe_{k}": v for k, v in probe.items()}, ("probe_logits", "probe_layer1", "probe_layer4"))

    # gain1__: the same layout with small activations (where deep additive terms still show).
    conv = convert_state_dict(sd_gain1, fmt)
    model.load_state_dict(conv.state_dict, assign=True)  # (a copy would write into the shared main-rule arrays)
    got = _segmentor_outputs(model, x)
    checked = _compare(z, {f"gain1__{k}": v for k, v in got.items()}, [f"gain1__{n}" for n in names])
    assert {"gain1__layer1", "gain1__logits", "gain1__aux_logits"} <= set(checked)

    if fmt == "ifvd":  # In-Place ABN scales by |w| + eps: negating every ABN weight changes nothing.
        kinds = dict(zip(z["keys"], z["kinds"]))
        negated = {k: -v if kinds[k] == "norm_weight" else v for k, v in sd.items()}
        a, b = convert_state_dict(sd, "ifvd").state_dict, convert_state_dict(negated, "ifvd").state_dict
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
        assert bool((negated["bn1.weight"] < 0).all())
        assert torch.equal(b["backbone.bn1.weight"], negated["bn1.weight"].abs() + 1e-5)
        if "18" in name:  # and end to end: the outputs are bit-identical
            with torch.no_grad():
                assert torch.equal(from_pretrained(negated)(x)["out"], from_pretrained(sd)(x)["out"])


def _imagenet_backbone(name, sd):
    if name.startswith("cirkd_"):  # CIRKD's dilated ResNetV1s, as its DeepLabV3 uses it (output stride 8)
        depth = 18 if "18" in name else 101
        return build_model(f"deeplabv3_resnet{depth}", 19, flavor="cirkd_v1", aux=False,
                           pretrained_backbone=sd).backbone.eval()
    with torch.device("meta"):  # empty (no random init): the strict load fills it
        if name == "tv_mobilenet_v2":
            model = MobileNetV2(num_classes=1000)
        else:  # output stride 32, as the source
            model = (resnet18 if "18" in name else resnet101)(num_classes=1000)
    report = load_backbone_weights(model, sd, strict=True)
    assert report.ok and not report.ignored
    return model.eval()


def _backbone_outputs(model, x):
    got = {}
    names = {"layer1": "features3", "layer2": "features6", "layer3": "features13", "layer4": "features17"} \
        if isinstance(model, MobileNetV2) else {f"layer{i}": f"layer{i}" for i in range(1, 5)}
    hooks = [getattr(model, m).register_forward_hook(lambda mod, inp, out, n=n: got.__setitem__(n, out))
             for m, n in names.items()]
    if isinstance(model, MobileNetV2):
        hooks.append(model.last_conv.register_forward_hook(lambda mod, inp, out: got.__setitem__("features18", out)))
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    if getattr(model, "num_classes", None) is not None:
        got["logits"] = out
    return got


@pytest.mark.parametrize("name", _cases(IMAGENET))
def test_imagenet_backbone_reproduces_peer(name):
    z, shapes, meta = _load(name)
    arrays = [a for a in z.files if a not in ("x", "probe_x", "keys", "kinds", "shapes", "key_sums", "meta")
              and not a.endswith("__chmean") and not a.startswith(("gain1__", "probe_"))]
    sd, sd_gain1 = _weights(z, shapes, meta)
    model = _imagenet_backbone(name, sd)
    x = torch.from_numpy(z["x"])
    assert sorted(_compare(z, _backbone_outputs(model, x), arrays)) == sorted(arrays)
    if "probe_x" in z.files:
        got = _backbone_outputs(model, torch.from_numpy(z["probe_x"]))
        assert _compare(z, {f"probe_{k}": v for k, v in got.items()}, ("probe_layer1", "probe_layer4"))
    report = load_backbone_weights(model, sd_gain1, strict=True)  # the same model, the gain1 weights
    assert report.ok and not report.ignored
    got = _backbone_outputs(model, x)
    checked = _compare(z, {f"gain1__{k}": v for k, v in got.items()}, [f"gain1__{a}" for a in arrays])
    assert len(checked) == len(arrays)


def test_student_backbone_from_imagenet_weights():
    # The student path (build_model(..., pretrained_backbone=...)): the classifier is left out, layer1 matches.
    z, shapes, meta = _load("tv_resnet18")
    model = build_model("pspnet_resnet18", 19, pretrained_backbone=_weights(z, shapes, meta)[0]).eval()
    got = _backbone_outputs(model.backbone, torch.from_numpy(z["x"]))
    assert _compare(z, got, ("layer1", "layer2")) == ["layer1", "layer2"]
    # mmseg ResNetV1c ImageNet layout (stem.*) and full checkpoints (their backbone; IFVD's ABN converted).
    cases = (("mmseg_pspnet_r18-d8", "mmseg", True), ("ifvd_pspnet_resnet18", "ifvd", False),
             ("cirkd_v1_deeplabv3_resnet18", "cirkd_v1", False))
    for fixture, flavor, backbone_only in cases:
        z, shapes, meta = _load(fixture)
        sd = _weights(z, shapes, meta)[1]
        if backbone_only:
            sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
            assert "stem.0.weight" in sd
        kind = "deeplabv3" if "deeplabv3" in fixture else "pspnet"
        model = build_model(f"{kind}_resnet18", 19, flavor=flavor, pretrained_backbone=sd).eval()
        got = _backbone_outputs(model.backbone, torch.from_numpy(z["x"]))
        assert _compare(z, {f"gain1__{k}": v for k, v in got.items()}, ("gain1__layer1", "gain1__layer4")) == \
            ["gain1__layer1", "gain1__layer4"], fixture


# Published parameter counts of the paper-recipe students (the fixtures' weight + bias + norm-weight elements).
PUBLISHED_STUDENTS = {
    ("pspnet_resnet18", "ifvd"): ("ifvd_pspnet_resnet18", 13_068_262, "13.1"),
    ("deeplabv3_resnet18", "cirkd_v1"): ("cirkd_v1_deeplabv3_resnet18", 13_607_974, "13.6"),
    ("pspnet_resnet18", "mmseg"): ("mmseg_pspnet_r18-d8", 12_790_086, "12.8"),
}


@pytest.mark.parametrize("name,flavor", sorted(PUBLISHED_STUDENTS))
def test_published_students_have_published_sizes(name, flavor):
    fixture, count, millions = PUBLISHED_STUDENTS[(name, flavor)]
    with torch.device("meta"):
        model = build_model(name, 19, flavor=flavor)
    n = sum(p.numel() for p in model.parameters())
    assert n == count and f"{n / 1e6:.1f}" == millions
    z, shapes, _ = _load(fixture)
    params = sum(int(np.prod(shapes[k])) for k, kind in zip(z["keys"], z["kinds"])
                 if kind in ("weight", "bias", "norm_weight"))
    assert params == count


def test_flavor_errors():
    with pytest.raises(ValueError, match="flavor"):
        build_model("pspnet_resnet18", 19, flavor="detectron")
    with pytest.raises(ValueError, match="ifvd.*deeplabv3"):
        build_model("deeplabv3_resnet18", 19, flavor="ifvd")
    with pytest.raises(ValueError, match="MobileNetV2"):
        build_model("deeplabv3_mobilenetv2", 19, flavor="torchvision")
    with pytest.raises(ValueError, match="deep_stem"):
        build_model("pspnet_resnet18", 19, flavor="mmseg", deep_stem=True)
    assert set(FLAVORS) == {"ifvd", "cirkd_v1", "cirkd_v2", "mmseg", "mmseg_b", "torchvision"}


def _small_checkpoint():
    z, shapes, meta = _load("ifvd_pspnet_resnet18")
    return z, _weights(z, shapes, meta)[1]


def test_unmapped_missing_and_misshaped_keys_are_listed():
    _, sd = _small_checkpoint()
    with pytest.raises(ValueError, match=r"no place in the model: pspmodule\.extra\.weight"):
        from_pretrained({**sd, "pspmodule.extra.weight": torch.zeros(1)})
    short = {k: v for k, v in sd.items() if k != "dsn.1.running_var"}
    with pytest.raises(ValueError, match=r"missing: aux_head\.conv\.1\.running_var"):
        from_pretrained(short)
    bad = dict(sd, **{"head.bias": torch.zeros(7)})
    with pytest.raises(ValueError, match=r"head\.classifier\.bias: checkpoint \(7,\) vs model \(19,\)"):
        from_pretrained(bad)
    with pytest.raises(ValueError, match="num_classes"):
        from_pretrained(sd, num_classes=21)
    with pytest.raises(ValueError, match="no place in the model"):
        from_pretrained(sd, format="mmseg")  # the wrong format is an error, never a partial load
    with pytest.raises(ValueError, match="format"):
        from_pretrained(sd, format="detectron")
    with pytest.raises(ValueError, match="ImageNet backbone"):
        from_pretrained({"layer1.0.conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError):
        from_pretrained("no/such/checkpoint.pth")


def test_teacher_loader_and_convert_cli(tmp_path, capsys):
    from sstkd.cli import main

    z, sd = _small_checkpoint()
    src = tmp_path / "ifvd_r18.pth"
    torch.save({f"module.{k}": v for k, v in sd.items()}, src)  # as saved from a DataParallel model
    dst = tmp_path / "converted.pt"
    assert main(["convert", str(src), str(dst)]) == 0
    assert "ifvd (recognized)" in capsys.readouterr().out
    x = torch.from_numpy(z["x"])
    with torch.no_grad():
        ref = from_pretrained(sd)(x)["out"]
        again = from_pretrained(str(dst))
        assert again.source_format == "sstkd" and again.flavor == "ifvd"
        assert torch.equal(again(x)["out"], ref)
        teacher = load_teacher(str(dst), model_args={"name": "pspnet_resnet18", "num_classes": 19,
                                                      "flavor": "ifvd"})
        out = teacher(x)
        assert set(out) == {"out"} and torch.equal(out["out"], ref)
        assert torch.equal(load_teacher(str(src), model_args={"name": "pspnet_resnet18", "num_classes": 19})(x)["out"],
                           ref)
    # A converted export records its flavor: a config that leaves the flavor unset still gets the IFVD network.
    plain_args = {"name": "pspnet_resnet18", "num_classes": 19, "base_width": 64, "aux": True, "flavor": None}
    with torch.no_grad():
        assert torch.equal(load_teacher(str(dst), model_args=plain_args)(x)["out"], ref)
    with pytest.raises(ValueError, match="config says name='pspnet_resnet101'"):
        load_teacher(str(src), model_args={"name": "pspnet_resnet101", "num_classes": 19})
    with pytest.raises(ValueError, match="config says flavor='mmseg'"):
        load_teacher(str(dst), model_args={"name": "pspnet_resnet18", "num_classes": 19, "flavor": "mmseg"})
    # Errors: one line on stderr, exit status 2, nothing overwritten.
    assert main(["convert", str(src), str(dst)]) == 2
    assert "exists" in capsys.readouterr().err
    junk = tmp_path / "junk.pth"
    torch.save({"a.weight": torch.zeros(2)}, junk)
    assert main(["convert", str(junk), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sstkd convert: error: checkpoint: unknown layout") and err.count("\n") == 1
    assert not (tmp_path / "out.pt").exists()
    assert main(["convert", str(src), str(tmp_path / "out.pt"), "--format", "mmseg"]) == 2
    err = capsys.readouterr().err
    assert "no place in the model: module.conv1.weight" not in err and "conv1.weight" in err
    assert err.count("\n") == 1 and not (tmp_path / "out.pt").exists()


def test_readme_states_the_published_sizes_and_one_command_per_source():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("### Using the field's checkpoints"):text.index("### Training")]
    for _, count, millions in PUBLISHED_STUDENTS.values():
        assert f"{count:,}" in section and f"({millions} M)" in section
    commands = [line for line in section.splitlines() if line.startswith("sstkd convert ")]
    for source in ("torchvision", "CIRKD", "IFVD", "mmseg", "sstkd"):
        assert any(source in line for line in commands), source
