"""Two CPU processes (gloo, DDP + SyncBN) train the same student as one process with the same global batch."""
import os
import socket

import torch
import torch.multiprocessing as mp

from sstkd.engine import checkpoint as C
from sstkd.engine.config import resolve_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_dropout() -> None:
    # Dropout masks are drawn per process, so they cannot match a single process's; everything
    # else (augmentation, BatchNorm statistics, losses, gradients) must.
    for cls in (torch.nn.Dropout, torch.nn.Dropout2d):
        cls.forward = lambda self, x: x


def _config(work_dir, teacher_ckpt):
    return resolve_config({
        "work_dir": str(work_dir), "device": "cpu", "method": "sstkd",
        "model": {"name": "pspnet_resnet18", "base_width": 8},
        "teacher": {"name": "pspnet_resnet18", "base_width": 8, "checkpoint": teacher_ckpt},
        # No critic: its gradient penalty draws random interpolation weights per process. Pixel KD,
        # the CDM (with the alignment head and its BatchNorm) and the DTIEM stay on: the DTIEM is
        # per image (exactly batch-decomposable), and its smoothed histogram term keeps the
        # gradient stable under the float-rounding changes of SyncBN's summation order. Its
        # histogram clipping does not: with 64 pixels per image and L = 128 the clip limit 4/L is
        # two pixels' mass, so a rounding-level move flips which bins are clipped (a kink of the
        # water-filling), which breaks a float tolerance; it is off here.
        "distill": {"loss": {"use_ho": False, "sta_clip": False}},
        # No rescale / padding: every process sees the same number of labelled pixels,
        # so the mean of the per-process means is the global mean.
        "data": {"name": "synthetic", "crop_size": [32, 32], "scale_range": None, "jitter": 0.1, "num_workers": 0,
                 "options": {"num_images": 16, "size": 32, "num_classes": 4}, "val_options": {"num_images": 3}},
        "train": {"iterations": 3, "batch_size": 4, "log_interval": 1, "checkpoint_interval": 3,
                  "eval_interval": 0, "eval_at_end": True, "progress": False},
        "eval": {"num_workers": 0, "batch_size": 1},
    })


def _worker(rank, world, port, cfg):
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    _no_dropout()
    from sstkd.engine.trainer import train

    train(cfg, log=None)


def test_two_process_ddp_matches_single_process(tmp_path, monkeypatch):
    from sstkd.models import build_model

    torch.manual_seed(3)
    args = {"name": "pspnet_resnet18", "num_classes": 4, "base_width": 8, "output_stride": 8, "aux": True,
            "deep_stem": False}
    teacher = str(tmp_path / "teacher.pt")
    C.export_student(build_model(**args), args, teacher)

    procs = mp.start_processes(_worker, args=(2, _free_port(), _config(tmp_path / "ddp", teacher)), nprocs=2,
                               join=False, start_method="spawn")
    # The reference: one process (this one) with the same global batch, trained while the two
    # processes start (they spend their first seconds importing torch).
    monkeypatch.setattr(torch.nn.Dropout, "forward", lambda self, x: x)
    monkeypatch.setattr(torch.nn.Dropout2d, "forward", lambda self, x: x)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from sstkd.engine.trainer import train

        train(_config(tmp_path / "single", teacher), log=None)
    finally:
        torch.set_num_threads(threads)
        while not procs.join():  # raises if a process failed
            pass

    ddp = C.load_checkpoint(tmp_path / "ddp" / "last.pt")
    single = C.load_checkpoint(tmp_path / "single" / "last.pt")
    assert ddp["iteration"] == single["iteration"] == 3
    for k, v in single["model"].items():
        torch.testing.assert_close(ddp["model"][k], v, rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    # Steps were taken (non-zero momentum), so equal weights are not trivially equal.
    assert any(float(s["momentum_buffer"].abs().sum()) > 0 for s in single["optimizer"]["state"].values())
    for k, v in single["distill"].items():  # the alignment head (not DDP-wrapped; averaged by hand)
        torch.testing.assert_close(ddp["distill"][k], v, rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    # Both processes' RNG states are in the checkpoint; the sharded evaluation covered the val set.
    assert isinstance(ddp["rng"], list) and len(ddp["rng"]) == 2
    export = C.load_checkpoint(tmp_path / "ddp" / "final_student.pt")
    assert export["metrics"]["pixels"] == 3 * 32 * 32
