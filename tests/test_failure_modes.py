"""Nothing lost, nothing silently wrong (issue 15): each case of docs/failure-modes.md, on tiny CPU runs."""
import json
import os
import subprocess
import sys

import pytest
import torch

from sstkd.engine import checkpoint as C
from sstkd.engine.config import ConfigError, load_config, resolve_config
from sstkd.engine.trainer import NonFiniteLossError, RunDirError, Trainer, train
from test_trainer import poison_loss_term, tiny_config


def tiny(work_dir, **sections):
    """test_trainer's seconds-scale run, shorter: 8 images, 3 iterations, a checkpoint every iteration."""
    train_cfg = {"iterations": 3, "checkpoint_interval": 1, **sections.pop("train", {})}
    data = {"options": {"num_images": 8, "size": 32, "num_classes": 4}}
    return tiny_config(work_dir, train=train_cfg, data=data, **sections)


def _write_yaml(path, cfg):
    import yaml

    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return str(path)


def _cli(argv):
    from sstkd.cli import main

    return main(argv)


def _all_finite(path):
    return C.first_nonfinite(C.load_checkpoint(path)) is None


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from sstkd.models import build_model

    args = {"name": "pspnet_resnet18", "num_classes": 4, "base_width": 8, "output_stride": 8, "aux": True,
            "deep_stem": False}
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    C.export_student(build_model(**args), args, path)
    return str(path)


class _NanGrad(torch.autograd.Function):
    """Identity forward, NaN backward: a gradient that breaks while every loss value is finite."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


# ------------------------------------------------------------ data loss: non-finite values


def test_skipped_step_leaves_no_trace_in_weights_or_batchnorm(tmp_path, monkeypatch):
    poison_loss_term(monkeypatch, "ce", 2)
    real_step, seen = Trainer._train_step, []

    def spy(self, it, data_iter):
        before = {k: v.clone() for k, v in self.student.state_dict().items()}
        out = real_step(self, it, data_iter)
        if out is None:
            seen.append((before, {k: v.clone() for k, v in self.student.state_dict().items()}))
        return out

    monkeypatch.setattr(Trainer, "_train_step", spy)
    summary = train(tiny(tmp_path / "r", train={"on_nonfinite": "skip"}), log=None)
    assert summary["skipped_steps"] == 1 and len(seen) == 1
    before, after = seen[0]
    assert any(k.endswith("running_mean") for k in before)
    for k in before:  # weights, running statistics and num_batches_tracked alike
        assert torch.equal(before[k], after[k]), k
    for name in ("last.pt", "final_student.pt"):
        assert _all_finite(tmp_path / "r" / name)


def test_nonfinite_gradient_names_iteration_and_term_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import sstkd.engine.trainer as T

    real_loss, calls = T.segmentation_loss, {"n": 0}

    def poisoned(outputs, target, aux_weight=0.4, ignore_index=255):
        calls["n"] += 1
        if calls["n"] >= 3:  # from iteration 3 on (and in the diagnosis forward)
            outputs = dict(outputs, aux=_NanGrad.apply(outputs["aux"]))
        return real_loss(outputs, target, aux_weight, ignore_index)

    monkeypatch.setattr(T, "segmentation_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient at iteration 3: term 'aux'") as info:
        train(tiny(tmp_path / "r"), log=None)
    assert (info.value.iteration, info.value.term, info.value.kind) == (3, "aux", "gradient")
    last = C.load_checkpoint(tmp_path / "r" / "last.pt")
    assert last["iteration"] == 2 and C.first_nonfinite(last) is None


def test_overflow_in_a_weighted_term_is_named(tmp_path, teacher):
    cfg = tiny(tmp_path / "r", method="sstkd",
               teacher={"name": "pspnet_resnet18", "base_width": 8, "checkpoint": teacher},
               distill={"loss": {"d_channels": 8, "lambda_str": 1e38}})
    with pytest.raises(NonFiniteLossError, match=r"iteration 1: term 'str'"):
        train(cfg, log=None)
    assert not (tmp_path / "r" / "last.pt").exists()


def test_diverging_skip_run_stops_and_exports_nothing_nonfinite(tmp_path):
    cfg = tiny(tmp_path / "r", train={"lr": 1e30, "iterations": 8, "on_nonfinite": "skip",
                                      "max_consecutive_skips": 2})
    with pytest.raises(NonFiniteLossError, match="in a row"):
        train(cfg, log=None)
    for name in os.listdir(tmp_path / "r"):
        if name.endswith(".pt"):
            assert _all_finite(tmp_path / "r" / name), name


def test_save_refuses_nonfinite_and_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.pt"
    C.save_checkpoint({"w": torch.ones(3)}, path)
    with pytest.raises(C.CheckpointError, match=r"optimizer\.state\.0"):
        C.save_checkpoint({"w": torch.ones(3), "optimizer": {"state": [torch.tensor([1.0, float("inf")])]}}, path)
    assert torch.equal(C.load_checkpoint(path)["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.pt"]


def test_nan_and_inf_lr_are_rejected_at_load_time(tmp_path):
    for value in (".nan", ".inf", "-0.01", "1e300"):
        with pytest.raises(ConfigError, match="train.lr"):
            resolve_config({}, [f"train.lr={value}"])


# ------------------------------------------------------------ data loss: the run directory


def test_existing_run_dir_is_refused_then_resumed_or_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    cfg_path = _write_yaml(tmp_path / "c.yaml", tiny(run, train={"iterations": 2}))
    assert _cli(["train", cfg_path]) == 0
    files = {n: (run / n).read_bytes() for n in ("metrics.jsonl", "last.pt", "config.yaml")}
    capsys.readouterr()
    assert _cli(["train", cfg_path]) == 2  # the same command again
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume auto" in err and "--overwrite" in err
    assert {n: (run / n).read_bytes() for n in files} == files  # nothing touched
    assert _cli(["train", cfg_path, "--resume", "auto"]) == 0  # nothing left to do, the run stays
    assert C.load_checkpoint(run / "last.pt")["iteration"] == 2
    assert (run / "metrics.jsonl").read_bytes() == files["metrics.jsonl"]
    assert _cli(["train", cfg_path, "--overwrite"]) == 0


def test_work_dir_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("mine")
    cfg_path = _write_yaml(tmp_path / "c.yaml", tiny(tmp_path / "unused"))
    assert _cli(["train", cfg_path, "--work-dir", str(target)]) == 2
    assert "work_dir" in capsys.readouterr().err and target.read_text() == "mine"
    with pytest.raises(RunDirError, match="not a directory"):
        Trainer(tiny(target), log=None)


def test_resume_refuses_changes_that_break_exactness_and_records_allowed_ones(tmp_path, capsys):
    run = tmp_path / "run"
    cfg_path = _write_yaml(tmp_path / "c.yaml", tiny(run, train={"iterations": 2}))
    assert _cli(["train", cfg_path]) == 0
    before = (run / "config.yaml").read_bytes(), (run / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    changed = ["--resume", "auto", "train.lr=5.0", "train.iterations=4", "distill.loss.lambda_str=0"]
    assert _cli(["train", cfg_path] + changed) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "train.iterations" in err and "--allow-changes" in err
    assert ((run / "config.yaml").read_bytes(), (run / "metrics.jsonl").read_bytes()) == before
    # A change that keeps the run exact is applied (and recorded) without asking.
    assert _cli(["train", cfg_path, "--resume", "auto", "train.log_interval=2"]) == 0
    assert _cli(["train", cfg_path, "--allow-changes"] + changed) == 0
    records = [json.loads(line) for line in open(run / "config_changes.jsonl")]
    assert records[0]["changes"] == {"train.log_interval": [1, 2]}
    assert records[1]["iteration"] == 2 and records[1]["changes"]["train.lr"] == [0.01, 5.0]
    assert records[1]["changes"]["distill.loss.lambda_str"] == [2.0, 0.0]
    # The new lr and schedule are the ones used: step 3 runs at 5.0 * (1 - 2/4) ** 0.9.
    step3 = [json.loads(line) for line in open(run / "metrics.jsonl") if '"iteration": 3' in line][0]
    assert step3["lr"] == pytest.approx(5.0 * 0.5 ** 0.9)
    assert load_config(run / "config.yaml").train.lr == 5.0


def test_resume_from_checkpoint_without_rng_or_iteration_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    train(tiny(run, train={"iterations": 1}), log=None)
    ck = C.load_checkpoint(run / "last.pt")
    for key in ("rng", "iteration"):
        broken = {k: v for k, v in ck.items() if k != key}
        C.save_checkpoint(broken, run / "last.pt")
        with pytest.raises(C.CheckpointError, match="lacks 'iteration' or 'rng'"):
            Trainer(tiny(run, resume="auto", train={"iterations": 1}), log=None)


def test_stale_temp_files_of_killed_writes_are_removed(tmp_path):
    run = tmp_path / "run"
    train(tiny(run, train={"iterations": 1}), log=None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run / f".last.pt.tmp.{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    mine = run / f".last.pt.tmp.{os.getpid()}"  # a live writer's file stays
    mine.write_bytes(b"in progress")
    train(tiny(run, resume="auto", train={"iterations": 1}), log=None)
    assert not stale.exists() and mine.exists()


# ------------------------------------------------------------ crashes -> one-line errors


def test_whole_section_overrides_merge_and_validate():
    cfg = resolve_config({"train": {"lr": 0.5}}, ["train={}", "train={iterations: 1}"])
    assert cfg.train.iterations == 1 and cfg.train.lr == 0.5 and cfg.train.eval_interval == 4000
    with pytest.raises(ConfigError, match="train.itrations"):
        resolve_config({}, ["train={itrations: 1}"])
    with pytest.raises(ConfigError, match="'train'"):
        resolve_config({}, ["train=5"])


def test_unknown_dataset_option_is_named_at_load_time():
    with pytest.raises(ConfigError, match=r"data\.options\.foo"):
        resolve_config({}, ["data.options.foo=1"])
    assert resolve_config({}, ["data.options.num_images=3"]).data.options == {"num_images": 3}


def test_overrides_after_options_and_number_spellings(tmp_path, capsys):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("method: sstkd\nteacher: {name: pspnet_resnet101}\n")
    assert _cli(["train", str(cfg_path), "--work-dir", str(tmp_path / "w"), "train.iterations=7",
                 "distill.loss.lambda_str=5e-4", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "iterations: 7" in out and "lambda_str: 0.0005" in out
    with pytest.raises(SystemExit) as e:
        _cli(["train", str(cfg_path), "--work-dir", str(tmp_path / "w"), "--bogus"])
    assert e.value.code == 2


def _eval(tmp_path, *extra):
    return _cli(["eval", "--dataset", "synthetic", "--data-option", "num_images=2", "--data-option", "size=32",
                 "--data-option", "num_classes=4", "--workers", "0", "--device", "cpu", *extra])


def test_sstkd_eval_errors_are_one_line_with_exit_2(tmp_path, capsys):
    import pickle

    from sstkd.models import build_model

    good = tmp_path / "good.pt"
    args = {"name": "pspnet_resnet18", "num_classes": 4, "base_width": 8}
    C.export_student(build_model(**args), args, good)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    cases = [
        (["--checkpoint", str(empty)], "empty.pt"),
        (["--checkpoint", str(evil)], "evil.pt"),
        (["--checkpoint", str(good), "--num-classes", "5"], "--num-classes"),
        (["--checkpoint", str(good), "--model", "deeplabv3_resnet18"], "--checkpoint"),
    ]
    for extra, named in cases:
        assert _eval(tmp_path, *extra) == 2, extra
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert _cli(["eval", "--checkpoint", str(good), "--dataset", "cityscapes", "--data-root",
                 str(tmp_path / "nonexistent"), "--device", "cpu"]) == 2
    assert "root" in capsys.readouterr().err
    for flag in (["--crop-size", "0"], ["--max-samples", "0"], ["--device", "gpu"]):
        with pytest.raises(SystemExit) as e:
            _eval(tmp_path, "--checkpoint", str(good), *flag)
        assert e.value.code == 2 and flag[0] in capsys.readouterr().err
    assert _eval(tmp_path, "--checkpoint", str(good), "--max-samples", "1") == 0
    assert "(1 images" in capsys.readouterr().out


def test_verify_rejects_unknown_device_and_op(capsys):
    assert _cli(["verify", "--device", "gpu"]) == 2
    assert "--device" in capsys.readouterr().err
    assert _cli(["verify", "--op", "bogus_op"]) == 2
    assert "bogus_op" in capsys.readouterr().err


def test_op_inputs_meta_tensors_and_bounds():
    from sstkd.ops import QuantizeCount, quantize_count, reproject

    s = torch.rand(2, 64)
    meta = torch.empty(2, 64, device="meta")
    with pytest.raises(ValueError, match=r"^s: .*meta"):
        quantize_count(meta, 8)
    _, h = quantize_count(s, 8)
    table = torch.rand(2, 3, 8)
    centers, _ = quantize_count(s, 8)
    with pytest.raises(ValueError, match=r"^s: .*meta"):
        reproject(table, meta, centers)
    with pytest.raises(ValueError, match="levels"):
        quantize_count(torch.rand(1, 16), 10**13)
    with pytest.raises(ValueError, match="iters"):
        quantize_count(s, 8, iters=10**9)
    with pytest.raises(ValueError, match="backend"):
        QuantizeCount(8, backend="bogus")
    # Lloyd steps stop once the centers stop moving: a long run equals a converged one.

def test_lloyd_steps_stop_when_the_centers_stop_moving(monkeypatch):
    import sstkd.ops.algorithms as A
    import sstkd.ops.quantize as Q

    real, calls = A.lloyd_update, {"n": 0}

    def counted(*args):
        calls["n"] += 1
        return real(*args)

    monkeypatch.setattr(A, "lloyd_update", counted)
    s = torch.rand(2, 256, generator=torch.Generator().manual_seed(0))
    c_long, h_long = Q.quantize_count(s, 8, iters=Q.MAX_ITERS, backend="torch")
    steps = calls["n"]
    assert steps < Q.MAX_ITERS  # stopped at a fixed point
    c_fix, h_fix = Q.quantize_count(s, 8, iters=steps, backend="torch")
    assert torch.equal(c_long, c_fix) and torch.equal(h_long, h_fix)


def test_contourlet_levels_are_bounded():
    from sstkd.ops import contourlet_dec

    with pytest.raises(ValueError, match=r"nlevs\[0\]"):
        contourlet_dec(torch.rand(1, 1, 32, 32), [40])


def test_pixelwise_kd_rejects_nonfinite_temperature():
    from sstkd.distill.response import pixelwise_kd

    x = torch.rand(1, 3, 4, 4)
    for t in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            pixelwise_kd(x, x, temperature=t)


def test_model_and_dataset_arguments_are_checked():
    from sstkd.data import SyntheticTextures
    from sstkd.models import build_model

    with pytest.raises(ValueError, match="name"):
        build_model(["pspnet_resnet18"], 19)
    for kw, named in ((dict(size=(64,)), "size"), (dict(size="64"), "size"), (dict(size=64.0), "size"),
                      (dict(regions=5), "regions")):
        with pytest.raises(ValueError, match=named):
            SyntheticTextures(num_images=1, **kw)


# ------------------------------------------------------------ nonsense accepted silently


@pytest.mark.parametrize("field, value", [
    ("sta_quantiles", [0.9, 0.1]), ("sta_quantiles", [0, 2]), ("sta_kernel", "gauss"),
    ("sta_intensity", "energy"), ("sta_redistribute", "twice"), ("d_betas", [1.5, 2]), ("backend", "nope"),
    ("str_pfilt", "db4"), ("str_nlevs", [40]), ("str_dfilt", "haar"),
])
def test_sstkd_config_rejects_nonsense_at_construction_and_load_time(field, value):
    from sstkd.distill import SSTKDConfig

    with pytest.raises((TypeError, ValueError), match=field):
        SSTKDConfig(**{field: value})
    with pytest.raises(ConfigError, match=f"distill.loss.{field}"):
        resolve_config({"method": "sstkd", "teacher": {"name": "pspnet_resnet18"}, "distill": {"loss": {field: value}}})


@pytest.mark.parametrize("override", [
    "train.lr=-0.01", "train.momentum=-0.5", "train.poly_power=-2", "train.aux_weight=-1", "data.jitter=5",
    "data.scale_range=[2, 1]", "device=gpu", "eval.max_samples=0", "train.grad_clip=0", "data.name=nope",
    "model.output_stride=7", "eval.scales=[0]",
])
def test_config_rejects_nonsense_naming_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve_config({}, [override])


def test_every_section_is_validated_on_construction_too():
    from sstkd.engine.config import Config, TrainConfig

    with pytest.raises(ConfigError, match="train.lr"):
        TrainConfig(lr=0)
    with pytest.raises(ConfigError, match="teacher.name"):
        Config(method="kd")
    cfg = Config(method="kd", teacher={"name": "pspnet_resnet101"})
    assert cfg.distill.loss.use_str is False  # the kd preset


def test_step_that_overflows_the_weights_names_the_parameter_and_saves_nothing(tmp_path, monkeypatch):
    real_step = torch.optim.SGD.step

    def overflowing_step(self, closure=None):  # an update that overflows (finite loss and gradients)
        out = real_step(self, closure)
        with torch.no_grad():
            self.param_groups[0]["params"][0].mul_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", overflowing_step)
    cfg = tiny(tmp_path / "r", train={"on_nonfinite": "skip"})
    with pytest.raises(NonFiniteLossError, match=r"non-finite update at iteration 1: term 'parameter ") as info:
        train(cfg, log=None)
    assert info.value.kind == "update"
    assert not (tmp_path / "r" / "last.pt").exists()


def test_one_state_dict_unwrapping():
    from sstkd.models import read_state_dict

    w = torch.ones(2)
    for ckpt in ({"model": {"module.a": w}}, {"student": {"a": w}}, {"state_dict": {"module.a": w}}, {"module.a": w}):
        assert C.extract_state_dict(ckpt) == {"a": w}
        assert read_state_dict(ckpt) == {"a": w}
    with pytest.raises(C.CheckpointError, match="no state dict"):
        C.extract_state_dict({"iteration": 3})
