"""Trainer, checkpoints and the train CLI on tiny synthetic runs (CPU, seconds each)."""
import json
import os
import random

import numpy as np
import pytest
import torch

from sstkd.engine import checkpoint as C
from sstkd.engine.config import resolve_config
from sstkd.engine.trainer import NonFiniteLossError, ResumableBatchSampler, Trainer, train


def tiny_config(work_dir, **sections):
    """A seconds-scale run: 8-wide PSPNet-ResNet18 on 32x32 synthetic textures."""
    cfg = {
        "work_dir": str(work_dir),
        "device": "cpu",
        "model": {"name": "pspnet_resnet18", "base_width": 8},
        "data": {"name": "synthetic", "crop_size": [32, 32], "scale_range": [0.75, 1.25], "jitter": 0.1,
                 "num_workers": 0, "options": {"num_images": 12, "size": 32, "num_classes": 4},
                 "val_options": {"num_images": 2}},
        "train": {"iterations": 4, "batch_size": 2, "log_interval": 1, "checkpoint_interval": 2,
                  "eval_interval": 0, "eval_at_end": False, "progress": False},
        "eval": {"num_workers": 0, "batch_size": 2},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return resolve_config(cfg)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A (randomly initialised) teacher export: a wider student-only checkpoint."""
    from sstkd.models import build_model

    torch.manual_seed(1)
    args = {"name": "pspnet_resnet18", "num_classes": 4, "base_width": 16, "output_stride": 8, "aux": True,
            "deep_stem": False}
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    C.export_student(build_model(**args), args, path)
    return str(path)


def distill_sections(teacher_ckpt, method="sstkd"):
    return {"method": method, "teacher": {"name": "pspnet_resnet18", "base_width": 16, "checkpoint": teacher_ckpt},
            "distill": {"loss": {"d_channels": 8}}}


# ------------------------------------------------------------------ checkpoints


def test_atomic_save_and_weights_only_load(tmp_path):
    path = tmp_path / "ck.pt"
    C.save_checkpoint({"w": torch.arange(5.0), "rng": C.capture_rng_state(), "it": 3, "cfg": {"a": [1, 2]}}, path)
    obj = torch.load(path, weights_only=True)
    assert torch.equal(obj["w"], torch.arange(5.0)) and obj["it"] == 3 and obj["cfg"] == {"a": [1, 2]}
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temp files left behind


def test_crash_during_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    C.save_checkpoint({"it": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")  # partial bytes, then the "kill"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        C.save_checkpoint({"it": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert C.load_checkpoint(path)["it"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_corrupt_and_missing_checkpoints_raise_clear_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(C.CheckpointError, match="cannot load checkpoint"):
        C.load_checkpoint(bad)
    with pytest.raises(C.CheckpointError, match="not found"):
        C.load_checkpoint(tmp_path / "nope.pt")


def test_rng_state_round_trip():
    state = C.capture_rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    C.restore_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_batch_sampler_resumes_mid_stream():
    full = ResumableBatchSampler(10, 3, seed=7)
    it = iter(full)
    stream = [next(it) for _ in range(8)]  # crosses an epoch boundary (3 batches per epoch)
    it2 = iter(ResumableBatchSampler(10, 3, seed=7, start_batch=5))
    assert [next(it2) for _ in range(3)] == stream[5:]
    # Two ranks together see exactly the single-process global batches.
    r0, r1 = iter(ResumableBatchSampler(10, 1, 2, 0, seed=7)), iter(ResumableBatchSampler(10, 1, 2, 1, seed=7))
    g = iter(ResumableBatchSampler(10, 2, 1, 0, seed=7))
    for _ in range(6):
        assert next(r0) + next(r1) == next(g)


# ------------------------------------------------------------------- training


def _student_state(work_dir):
    return C.load_checkpoint(os.path.join(work_dir, "final_student.pt"))["model"]


class _Interrupt(Exception):
    pass


def test_resume_is_bit_exact(tmp_path, teacher_ckpt, monkeypatch):
    """N iterations straight == N/2, 'crash', resume auto, N/2 (SSTKD: heads, critic, Adam, GP RNG)."""
    sections = distill_sections(teacher_ckpt)
    straight = train(tiny_config(tmp_path / "a", **sections), log=None)
    assert straight["start_iteration"] == 0

    real_save = Trainer._save_training_checkpoint

    def save_then_die(self, iteration):
        real_save(self, iteration)
        if iteration == 2:
            raise _Interrupt

    monkeypatch.setattr(Trainer, "_save_training_checkpoint", save_then_die)
    with pytest.raises(_Interrupt):
        train(tiny_config(tmp_path / "b", **sections), log=None)
    monkeypatch.setattr(Trainer, "_save_training_checkpoint", real_save)
    assert C.load_checkpoint(tmp_path / "b" / "last.pt")["iteration"] == 2
    resumed = train(tiny_config(tmp_path / "b", resume="auto", **sections), log=None)
    assert resumed["start_iteration"] == 2

    a, b = _student_state(tmp_path / "a"), _student_state(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la, lb = C.load_checkpoint(tmp_path / "a" / "last.pt"), C.load_checkpoint(tmp_path / "b" / "last.pt")
    for k in la["distill"]:
        assert torch.equal(la["distill"][k], lb["distill"][k]), k
    # The resumed run's log holds each iteration once, as the straight run's does.
    its = [json.loads(line)["iteration"] for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert its == [1, 2, 3, 4]


def poison_loss_term(monkeypatch, term, call):
    """Make the trainer's segmentation loss return NaN for ``term`` on its ``call``-th call (1-based).
    Returns the call counter ``{"n": calls so far}`` (reset it to poison a later run as well)."""
    import sstkd.engine.trainer as T

    real, calls = T.segmentation_loss, {"n": 0}

    def poisoned(outputs, target, aux_weight=0.4, ignore_index=255):
        terms = real(outputs, target, aux_weight, ignore_index)
        calls["n"] += 1
        if calls["n"] == call:
            terms[term] = terms[term] * float("nan")
        return terms

    monkeypatch.setattr(T, "segmentation_loss", poisoned)
    return calls


def test_nonfinite_loss_stops_with_iteration_and_term(tmp_path, monkeypatch):
    calls = poison_loss_term(monkeypatch, "aux", 3)
    with pytest.raises(NonFiniteLossError, match=r"iteration 3: term 'aux'") as info:
        train(tiny_config(tmp_path / "stop"), log=None)
    assert info.value.iteration == 3 and info.value.term == "aux"

    calls["n"] = 0
    summary = train(tiny_config(tmp_path / "skip", train={"on_nonfinite": "skip"}), log=None)
    assert summary["skipped_steps"] == 1
    assert all(torch.isfinite(v.float()).all() for v in _student_state(tmp_path / "skip").values())
    records = [json.loads(line) for line in open(tmp_path / "skip" / "metrics.jsonl")]
    assert {"type": "skip", "iteration": 3, "term": "aux"} in records


def test_sstkd_end_to_end_exports_loadable_student(tmp_path, teacher_ckpt):
    from sstkd.models import build_model

    cfg = tiny_config(tmp_path / "run", **distill_sections(teacher_ckpt),
                      train={"iterations": 2, "eval_at_end": True, "accumulate": 2})
    summary = train(cfg, log=None)
    assert 0.0 <= summary["best_miou"] <= 1.0 and summary["sec_per_iter"] > 0
    for name in ("best_student.pt", "final_student.pt"):
        ck = torch.load(tmp_path / "run" / name, weights_only=True)
        model = build_model(**ck["model_args"])
        model.load_state_dict(ck["model"])  # strict: exactly the student's keys
    assert (tmp_path / "run" / "config.yaml").is_file()
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    train_recs = [r for r in records if r["type"] == "train"]
    assert {"ce", "aux", "pi", "ho", "str", "sta", "loss", "d_loss"} <= set(train_recs[-1])
    assert any(r["type"] == "eval" and "mIoU" in r for r in records)


def test_amp_bf16_and_clipping_run(tmp_path):
    summary = train(tiny_config(tmp_path / "amp", train={"iterations": 2, "amp": "bf16", "grad_clip": 1.0}),
                    log=None)
    assert summary["iterations"] == 2
    assert all(torch.isfinite(v.float()).all() for v in _student_state(tmp_path / "amp").values())


# ------------------------------------------------------------------------ CLI


def _cli(argv):
    from sstkd.cli import main

    return main(argv)


def test_cli_errors_exit_nonzero(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: cityscapes, root: %s}\ntrain: {iterations: 1, batch_size: 2}\n"
                   % (tmp_path / "no_such_dir"))
    assert _cli(["train", str(cfg), "train.lrr=1"]) == 2
    assert "train.lrr" in capsys.readouterr().err
    assert _cli(["train", str(cfg), "--work-dir", str(tmp_path / "w")]) == 2
    assert "no_such_dir" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    ok_cfg = tmp_path / "ok.yaml"
    ok_cfg.write_text("data: {name: synthetic, num_workers: 0, options: {num_images: 4, size: 32}}\n"
                      "train: {iterations: 1, batch_size: 2}\ndevice: cpu\n")
    assert _cli(["train", str(ok_cfg), "--resume", str(bad), "--work-dir", str(tmp_path / "w2")]) == 2
    assert "bad.pt" in capsys.readouterr().err


def test_cli_print_config_and_help(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {iterations: 7}\n")
    assert _cli(["train", str(cfg), "seed=3", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "iterations: 7" in out and "seed: 3" in out
    for cmd in (["train", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as e:
            _cli(cmd)
        assert e.value.code == 0


def test_sigkill_mid_training_then_resume_auto_is_bit_exact(tmp_path):
    """A real process killed with SIGKILL (possibly mid-checkpoint) resumes exactly."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    sections = {"train": {"iterations": 30, "checkpoint_interval": 1, "log_interval": 5}}
    cfg = tiny_config(tmp_path / "killed", **sections)
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sstkd", "train", str(cfg_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                if last.is_file() and C.load_checkpoint(last)["iteration"] >= 3:
                    break
            except C.CheckpointError:
                pass  # replaced under our feet: read again
            time.sleep(0.02)
        was_running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        err = proc.stderr.read().decode()
        proc.stderr.close()
    assert was_running, f"the run ended before it could be killed: {err}"
    killed_at = C.load_checkpoint(last)["iteration"]  # the last complete checkpoint loads
    assert 3 <= killed_at < 30
    resumed = train(tiny_config(tmp_path / "killed", resume="auto", **sections), log=None)
    assert resumed["start_iteration"] == killed_at
    train(tiny_config(tmp_path / "straight", **sections), log=None)
    a, b = _student_state(tmp_path / "straight"), _student_state(tmp_path / "killed")
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------- every config family

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PAIRS = ("pspnet_r101-pspnet_r18", "deeplabv3_r101-deeplabv3_r18", "deeplabv3_r101-deeplabv3_mbv2")
_FAMILIES = ([f"{p}_{m}" for p in _PAIRS for m in ("baseline", "kd", "sstkd")]
             + ["teacher_pspnet_r101", "teacher_deeplabv3_r101"])


@pytest.fixture(scope="module")
def tiny_teachers(tmp_path_factory):
    from sstkd.models import build_model

    out = {}
    # the flavors configs/_base_/protocols/ifvd.yaml gives these teachers
    for name, flavor in (("pspnet_resnet101", "ifvd"), ("deeplabv3_resnet101", "cirkd_v1")):
        args = {"name": name, "num_classes": 4, "base_width": 8, "output_stride": 8, "aux": True,
                "deep_stem": False, "flavor": flavor}
        path = tmp_path_factory.mktemp("teachers") / f"{name}.pt"
        C.export_student(build_model(**args), args, path)
        out[name] = str(path)
    return out


@pytest.mark.parametrize("family", _FAMILIES)
def test_every_config_family_trains_and_evaluates(tmp_path, family, tiny_teachers):
    """The real recipes (configs/cityscapes/*) at toy sizes: 1 iteration + sliding-window eval."""
    from sstkd.engine.config import load_config

    overrides = [
        f"work_dir={tmp_path}", "device=cpu", "data.name=synthetic", "data.root=null", "data.crop_size=[32, 32]",
        "data.num_workers=0", "data.options={num_images: 4, size: 32, num_classes: 4}",
        "data.val_options={num_images: 1}", "model.base_width=8", "model.pretrained_backbone=null",
        "train.iterations=1", "train.batch_size=2", "train.progress=false", "eval.num_workers=0",
        "eval.mode=slide", "eval.crop_size=[32, 32]", "eval.stride=[16, 16]",
    ]
    cfg = load_config(os.path.join(REPO, "configs", "cityscapes", f"{family}.yaml"), overrides)
    if cfg["method"] != "baseline":
        cfg = load_config(os.path.join(REPO, "configs", "cityscapes", f"{family}.yaml"), overrides + [
            "teacher.base_width=8", f"teacher.checkpoint={tiny_teachers[cfg['teacher']['name']]}",
            "distill.loss.d_channels=8"])
    summary = train(cfg, log=None)
    assert summary["iterations"] == 1 and 0.0 <= summary["best_miou"] <= 1.0
    assert (tmp_path / "best_student.pt").is_file()
