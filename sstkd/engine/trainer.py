"""Iteration-based training loop for baseline and distillation (KD, SSTKD) runs.

Plain PyTorch, in the spirit of torchvision's reference scripts: one
:class:`Trainer` builds everything from a resolved config
(:func:`sstkd.engine.config.load_config`) and :meth:`Trainer.train` runs it.

Per iteration (``train.accumulate`` forwards, one optimizer step):

* student forward (DDP-wrapped under ``torchrun``) with a feature tap on its
  low-level stage; ``L_seg = CE(out) + aux_weight · CE(aux)`` (ignore 255);
* for ``kd`` / ``sstkd``: the teacher forward in ``eval()`` under
  ``torch.no_grad()`` (never DDP-wrapped), then ``SSTKDLoss`` on logits and
  tapped features; the total is ``L_seg + loss["loss"]``;
* every term is checked: a non-finite one stops the run with
  :class:`NonFiniteLossError` naming the iteration and the term, or skips the
  step (``train.on_nonfinite: skip``);
* SGD (student + alignment heads, poly lr), optional clipping, AMP (bf16, or
  fp16 with a GradScaler), then one critic step for the holistic loss with
  its own Adam.

Exact resume: sampling and augmentation of every sample are functions of
``(seed, epoch, position)`` (see :class:`ResumableBatchSampler`), and a
checkpoint holds the models, heads, optimizers, scheduler, scaler, every RNG
state and the iteration, so ``resume: auto`` continues bit-exactly on the CPU.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import re
import sys
import time
import warnings
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from sstkd.engine import checkpoint as ckpt_lib
from sstkd.engine import distributed as dist_lib
from sstkd.engine.config import Config, ConfigError, config_diff, resolve_config, save_config

__all__ = [
    "Trainer",
    "train",
    "NonFiniteLossError",
    "ResumableBatchSampler",
    "segmentation_loss",
    "poly_factor",
    "model_args_from_config",
    "resolve_work_dir",
    "RunDirError",
]


class NonFiniteLossError(RuntimeError):
    """A loss term, a gradient or a parameter became NaN or Inf; the message names the
    iteration, what (``kind``: ``loss``, ``gradient`` or ``update``) and the term."""

    def __init__(self, iteration: int, term: str, value: float, kind: str = "loss"):
        self.iteration, self.term, self.value, self.kind = iteration, term, value, kind
        hint = ("lower train.lr or add train.grad_clip" if kind == "update" or "diverged" in kind
                else "set train.on_nonfinite=skip to skip such steps")
        super().__init__(f"non-finite {kind} at iteration {iteration}: term {term!r} = {value} ({hint}); "
                         "the last checkpoint was left as it was")


class RunDirError(ConfigError):
    """The run directory already holds a run (or is not a directory)."""


# Files of a run; a directory holding any of them holds a run.
RUN_FILES = ("last.pt", "metrics.jsonl", "config.yaml", "best_student.pt", "final_student.pt")
CHANGES_FILE = "config_changes.jsonl"
# Keys that do not change the training trajectory: changing them on resume keeps it exact.
RESUME_SAFE_KEYS = ("work_dir", "name", "device", "data.num_workers", "train.log_interval",
                    "train.checkpoint_interval", "train.eval_interval", "train.eval_at_end", "train.tensorboard",
                    "train.progress", "eval.")


# ----------------------------------------------------------------------- data


class ResumableBatchSampler:
    """Infinite batches of ``(index, epoch)`` keys, deterministic in ``(seed, epoch, position)``.

    Epoch ``e`` is a permutation of the dataset drawn from a generator seeded
    by ``(seed, e)``; it is cut into global batches of ``batch_size ·
    world_size`` (the tail that does not fill one is dropped) and process
    ``rank`` takes the ``rank``-th contiguous slice of each. Starting at batch
    ``start_batch`` therefore resumes the exact stream, for any number of
    workers, and every global batch holds the same samples whatever the
    world size. The dataset sees ``(index, epoch)`` (see :class:`EpochIndexed`).
    """

    def __init__(self, dataset_len: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 start_batch: int = 0, shuffle: bool = True):
        global_batch = batch_size * world_size
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        if dataset_len < global_batch:
            raise ValueError(f"dataset: {dataset_len} samples cannot fill one global batch of {global_batch}")
        self.dataset_len, self.batch_size = dataset_len, batch_size
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.start_batch, self.shuffle = start_batch, shuffle
        self.batches_per_epoch = dataset_len // global_batch

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.dataset_len))
        mixed = np.random.SeedSequence([self.seed & 0xFFFFFFFF, 0x5A3D, epoch]).generate_state(2)
        g = torch.Generator().manual_seed(int(mixed[0]) << 32 | int(mixed[1]))
        return torch.randperm(self.dataset_len, generator=g).tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        b = self.start_batch
        epoch, perm = -1, []
        while True:
            e, k = divmod(b, self.batches_per_epoch)
            if e != epoch:
                epoch, perm = e, self._permutation(e)
            start = (k * self.world_size + self.rank) * self.batch_size
            yield [(i, epoch) for i in perm[start:start + self.batch_size]]
            b += 1


class EpochIndexed(Dataset):
    """Wraps a dataset so that ``ds[(index, epoch)]`` selects the augmentation stream of
    ``epoch`` (``set_epoch``) before reading ``index``; works in worker processes
    where the main process's ``set_epoch`` would not reach."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, epoch = key
        base = self.dataset.dataset if isinstance(self.dataset, Subset) else self.dataset
        if hasattr(base, "set_epoch"):
            base.set_epoch(epoch)
        return self.dataset[index]


def build_datasets(cfg: Mapping, with_val: bool = True):
    """Train (augmented, ``aug_seed`` = the run seed) and validation datasets from ``cfg.data``."""
    from sstkd.data import build_dataset, build_transforms

    d = cfg.data
    train_tf = build_transforms(train=True, crop_size=tuple(d.crop_size),
                                scale_range=tuple(d.scale_range) if d.scale_range else None,
                                flip=d.hflip, jitter=d.jitter or None, cat_max_ratio=d.cat_max_ratio)
    train_set = build_dataset(d.name, d.root, d.train_split, transforms=train_tf,
                              aug_seed=int(cfg.seed), **d.options)
    val_set = None
    if with_val:
        val_set = build_dataset(d.name, d.root, d.val_split, transforms=build_transforms(train=False),
                                **{**d.options, **d.val_options})
        n = cfg.eval.max_samples
        if n is not None and n < len(val_set):
            val_set = Subset(val_set, range(n))
    return train_set, val_set


def _num_classes(dataset) -> int:
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    n = getattr(base, "num_classes", None)
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"data.name: dataset {type(base).__name__} does not expose num_classes")
    return n


# ---------------------------------------------------------------------- helpers


def segmentation_loss(outputs: Mapping[str, torch.Tensor], target: torch.Tensor, aux_weight: float = 0.4,
                      ignore_index: int = 255) -> dict[str, torch.Tensor]:
    """``ce`` = CE(out), ``aux`` = CE(aux) when present (float32 logits, ``ignore_index`` excluded),
    and ``seg = ce + aux_weight · aux``."""
    terms = {"ce": F.cross_entropy(outputs["out"].float(), target, ignore_index=ignore_index)}
    seg = terms["ce"]
    if "aux" in outputs and aux_weight > 0:
        terms["aux"] = F.cross_entropy(outputs["aux"].float(), target, ignore_index=ignore_index)
        seg = seg + aux_weight * terms["aux"]
    terms["seg"] = seg
    return terms


def poly_factor(total: int, power: float) -> Callable[[int], float]:
    """``it -> (1 - it / total) ** power`` (a plain function, so LambdaLR's state dict skips it)."""
    def factor(it: int) -> float:
        return max(0.0, 1.0 - it / total) ** power
    return factor


def model_args_from_config(section: Mapping, num_classes: int) -> dict:
    """``build_model`` keyword arguments from a ``model`` / ``teacher`` config section."""
    return {"name": section.name, "num_classes": int(num_classes), "base_width": section.base_width,
            "output_stride": section.output_stride, "aux": section.aux, "deep_stem": section.deep_stem,
            "flavor": section.flavor}


def resolve_work_dir(cfg: Mapping) -> str:
    return cfg.work_dir or os.path.join("runs", cfg.name or "run")


def _run_dir_problem(work_dir: str, resume: str | None, overwrite: bool) -> str | None:
    """Why a run may not start in ``work_dir`` (None when it may)."""
    if os.path.exists(work_dir) and not os.path.isdir(work_dir):
        return f"work_dir: {work_dir} exists and is not a directory"
    if overwrite and resume is not None:
        return "--overwrite and --resume exclude each other: resume the run, or replace it"
    if not os.path.isdir(work_dir) or overwrite:
        return None
    held = [n for n in RUN_FILES if os.path.isfile(os.path.join(work_dir, n))]
    if not held:
        return None
    if resume == "auto":
        return None
    if resume is not None and os.path.abspath(os.path.dirname(resume)) == os.path.abspath(work_dir):
        return None
    return (f"work_dir: {work_dir} already holds a run ({', '.join(held)}); continue it with --resume auto "
            "(resume=auto), replace it with --overwrite, or choose another --work-dir")


_TEMP_FILE = re.compile(r"^\.?.+\.tmp\.(\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _stale_temp_files(work_dir: str) -> list[str]:
    """Temporary files of interrupted atomic writes (``.last.pt.tmp.<pid>``) whose writer is gone."""
    out = []
    for name in sorted(os.listdir(work_dir)):
        m = _TEMP_FILE.match(name)
        if m and os.path.isfile(os.path.join(work_dir, name)):
            pid = int(m.group(1))
            if pid != os.getpid() and not _pid_alive(pid):
                out.append(name)
    return out


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _set_deterministic(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if on != torch.are_deterministic_algorithms_enabled():
        # (only when it changes: the call imports torch._inductor, seconds on a small CPU)
        torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on


def _first_nonfinite(terms: Mapping[str, torch.Tensor]) -> tuple[str, float] | None:
    names = list(terms)
    values = torch.stack([terms[n].detach().float().reshape(()) for n in names])
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return None
    i = int((~finite).nonzero()[0, 0])
    return names[i], float(values[i])


# ---------------------------------------------------------------------- trainer


class Trainer:
    """Build and run one training run from a resolved config.

    Args:
        cfg: a resolved config (:func:`sstkd.engine.config.load_config`).
        log: callable for human-readable log lines (rank 0 only); None = silent.

    After :meth:`train`, the run directory (``cfg.work_dir``) holds
    ``config.yaml`` (the resolved config), ``metrics.jsonl``, ``last.pt``
    (the full training checkpoint), ``best_student.pt`` (best mIoU, when
    evaluating) and ``final_student.pt`` (student-only exports).
    """

    def __init__(self, cfg: Config | Mapping[str, Any], log: Callable[[str], None] | None = print, *,
                 overwrite: bool = False, allow_changes: bool = False):
        self.cfg = cfg = copy.deepcopy(cfg) if isinstance(cfg, Config) else resolve_config(cfg)
        self.overwrite, self.allow_changes = bool(overwrite), bool(allow_changes)
        self.dist = dist_lib.init_distributed(cfg.device)
        self.device = self.dist.device
        self.is_main = self.dist.is_main
        self._log_fn = log if self.is_main else None
        self.work_dir = resolve_work_dir(cfg)
        if not cfg.name:
            cfg.name = os.path.basename(os.path.normpath(self.work_dir))
        self._check_run_dir()
        self.method = cfg.method
        t = cfg.train
        self.amp = t.amp
        if self.amp == "fp16" and self.device.type == "cpu":
            warnings.warn("train.amp=fp16 on the CPU: float16 autocast is slow there; bf16 is the CPU choice")
        world = self.dist.world_size
        if t.batch_size % world:
            raise ConfigError(f"train.batch_size: {t.batch_size} is not divisible by the {world} processes")
        self.per_rank_batch = t.batch_size // world

        _set_deterministic(bool(cfg.deterministic))
        # Same seed on every rank for building the models (the heads are not DDP-wrapped).
        _seed_everything(int(cfg.seed))
        self.train_set, self.val_set = build_datasets(cfg, with_val=self._evaluates())
        self.num_classes = _num_classes(self.train_set)
        self._build_models()
        self._build_optimizers()
        # Per-rank stream for everything random in training (dropout, the critic's GP).
        _seed_everything(int(cfg.seed) + self.dist.rank)

        self.start_iter = 0
        self.best_miou = -1.0
        self.skipped_steps = 0
        self._skips_in_a_row = 0
        self._resumed_from: str | None = None
        self._config_changes: dict = {}
        self._maybe_resume()

    def _check_run_dir(self) -> None:
        """Refuse to start a new run over an existing one (unless ``overwrite``), before anything is built."""
        problem = None
        if self.is_main:
            problem = _run_dir_problem(self.work_dir, self.cfg.resume, self.overwrite)
        if self.dist.distributed:
            problem = dist_lib.broadcast_object(problem)
        if problem:
            raise RunDirError(problem)

    # ------------------------------------------------------------------ build
    def _evaluates(self) -> bool:
        t = self.cfg.train
        return bool(t.eval_interval > 0 or t.eval_at_end)

    def _build_models(self) -> None:
        from sstkd.models import build_model

        cfg = self.cfg
        self.model_args = model_args_from_config(cfg.model, self.num_classes)
        student = build_model(**self.model_args, pretrained_backbone=cfg.model.pretrained_backbone)
        student.to(self.device)
        if self.dist.distributed and cfg.model.sync_bn:
            student = dist_lib.convert_sync_batchnorm(student, self.device, force=True)
        self.student = student  # unwrapped
        self.teacher = None
        self.distiller = None
        self.s_tap = self.t_tap = None
        if self.method != "baseline":
            self._build_distillation()
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.student_ddp = DDP(student, device_ids=ids,
                                   find_unused_parameters=cfg.train.find_unused_parameters)
        else:
            self.student_ddp = student

    def _build_distillation(self) -> None:
        from sstkd.distill import FeatureTap, SSTKDLoss
        from sstkd.models import load_teacher

        cfg = self.cfg
        tc = cfg.teacher
        if not tc.checkpoint:
            raise ConfigError(f"teacher.checkpoint: method {self.method!r} needs the teacher's weights "
                              "(a student-only export such as best_student.pt of the teacher's run)")
        self.teacher_args = model_args_from_config(tc, self.num_classes)
        # Any source sstkd.models.from_pretrained reads (sstkd, torchvision, CIRKD, SKD/IFVD, mmseg).
        try:
            teacher = load_teacher(tc.checkpoint, model_args=self.teacher_args, format=tc.format)
        except (ValueError, TypeError, FileNotFoundError) as e:
            raise ConfigError(f"teacher.checkpoint: {tc.checkpoint}: {e}") from None
        teacher.to(self.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher

        loss_cfg = cfg.distill.loss
        taps = cfg.distill.taps
        self.s_tap = FeatureTap(self.student, {"low": taps.student})
        self.t_tap = FeatureTap(teacher, {"low": taps.teacher}, detach=True)
        s_ch = _tap_channels(self.student, taps.student)
        t_ch = _tap_channels(teacher, taps.teacher)
        distiller = SSTKDLoss(s_ch, t_ch, self.num_classes, loss_cfg).to(self.device)
        if self.dist.distributed and cfg.model.sync_bn:
            distiller = dist_lib.convert_sync_batchnorm(distiller, self.device, force=True)
        if self.dist.distributed:  # not DDP-wrapped: start every replica from rank 0's weights
            import torch.distributed as dist

            for t in list(distiller.parameters()) + list(distiller.buffers()):
                dist.broadcast(t.data, src=0)
        self.distiller = distiller

    def _build_optimizers(self) -> None:
        t = self.cfg.train
        params = [p for p in self.student.parameters() if p.requires_grad]
        self.head_params = self.distiller.student_side_parameters() if self.distiller is not None else []
        self.optimizer = torch.optim.SGD(params + list(self.head_params), lr=t.lr, momentum=t.momentum,
                                         weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           poly_factor(t.iterations, t.poly_power))
        self.d_optimizer = None
        if self.distiller is not None and self.distiller.discriminator is not None:
            self.d_optimizer = self.distiller.make_discriminator_optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")

    # ---------------------------------------------------------------- resume
    def _resume_path(self) -> str | None:
        r = self.cfg.resume
        if r is None:
            return None
        if r == "auto":
            return ckpt_lib.find_last_checkpoint(self.work_dir)
        if not os.path.isfile(r):
            raise ckpt_lib.CheckpointError(f"resume: checkpoint not found: {r}")
        return r

    def _maybe_resume(self) -> None:
        path = self._resume_path()
        if path is None:
            return
        ck = ckpt_lib.load_checkpoint(path, map_location=self.device)
        if ck.get("format") != ckpt_lib.TRAINING_FORMAT:
            raise ckpt_lib.CheckpointError(f"resume: {path} is not a training checkpoint "
                                           f"(format {ck.get('format')!r}); student exports cannot be resumed")
        try:
            self.student.load_state_dict(ck["model"])
            if self.distiller is not None:
                self.distiller.load_state_dict(ck["distill"])
            elif ck.get("distill"):
                raise ckpt_lib.CheckpointError("resume: the checkpoint holds distillation heads but method is baseline")
            self.optimizer.load_state_dict(ck["optimizer"])
            if self.d_optimizer is not None:
                self.d_optimizer.load_state_dict(ck["d_optimizer"])
            self.scheduler.load_state_dict(ck["scheduler"])
            self.scaler.load_state_dict(ck["scaler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise ckpt_lib.CheckpointError(f"resume: {path} does not match this run: {type(e).__name__}: {e}") from None
        self._compare_config(ck.get("config"), path)
        if ck.get("iteration") is None or not isinstance(ck.get("iteration"), int) or "rng" not in ck:
            raise ckpt_lib.CheckpointError(f"resume: {path} lacks 'iteration' or 'rng' (not a complete training "
                                           "checkpoint)")
        if self._config_changes:
            self._apply_changed_hyperparameters()
        rng = ck["rng"]
        if isinstance(rng, list) and len(rng) == self.dist.world_size:
            ckpt_lib.restore_rng_state(rng[self.dist.rank])
        else:
            warnings.warn(f"resume: RNG states of {len(rng)} processes, running {self.dist.world_size}: "
                          "the random streams restart (not an exact resume)")
        self.start_iter = int(ck["iteration"])
        if self.start_iter >= self.cfg.train.iterations and "train.iterations" in self._config_changes:
            raise ConfigError(f"train.iterations: {self.cfg.train.iterations}, but the checkpoint {path} is at "
                              f"iteration {self.start_iter} already")
        self.best_miou = float(ck.get("best_miou", -1.0))
        self.skipped_steps = int(ck.get("skipped_steps", 0))
        self._resumed_from = path

    def _compare_config(self, stored, path: str) -> None:
        """Diff the checkpoint's config against this run's; refuse trajectory changes unless allowed."""
        if not isinstance(stored, Mapping):
            return  # an old checkpoint without its config: nothing to compare with
        try:
            old = resolve_config(stored).to_dict()
        except ConfigError:
            old = dict(stored)
        diff = config_diff(old, self.cfg.to_dict())
        diff.pop("resume", None)  # how this process was started, not part of the experiment
        self._config_changes = diff
        breaking = {k: v for k, v in diff.items() if not any(k == s or (s.endswith(".") and k.startswith(s))
                                                             for s in RESUME_SAFE_KEYS)}
        if breaking and not self.allow_changes:
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(breaking.items())[:6])
            more = f" (+{len(breaking) - 6} more)" if len(breaking) > 6 else ""
            raise ConfigError(f"resume: the config differs from the one in {path}: {shown}{more}. These change "
                              "the run, so it would no longer match an uninterrupted one. Resume with the run's "
                              f"own config ({os.path.join(self.work_dir, 'config.yaml')}), or pass "
                              "--allow-changes to apply them (recorded in "
                              f"{os.path.join(self.work_dir, CHANGES_FILE)})")

    def _apply_changed_hyperparameters(self) -> None:
        """Make a resumed run use the new lr / momentum / weight decay / schedule, not the checkpoint's."""
        t = self.cfg.train
        factor = poly_factor(t.iterations, t.poly_power)(self.scheduler.last_epoch)
        for g in self.optimizer.param_groups:
            g.update(initial_lr=t.lr, lr=t.lr * factor, momentum=t.momentum, weight_decay=t.weight_decay)
        self.scheduler.base_lrs = [t.lr] * len(self.optimizer.param_groups)
        if self.d_optimizer is not None:
            c = self.cfg.distill.loss
            for g in self.d_optimizer.param_groups:
                g.update(lr=c.d_lr, betas=tuple(c.d_betas))

    def _save_training_checkpoint(self, iteration: int) -> None:
        rng = dist_lib.all_gather_objects(ckpt_lib.capture_rng_state())
        if not self.is_main:
            return
        state = {
            "format": ckpt_lib.TRAINING_FORMAT,
            "iteration": iteration,
            "model": self.student.state_dict(),
            "model_args": self.model_args,
            "distill": self.distiller.state_dict() if self.distiller is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "d_optimizer": self.d_optimizer.state_dict() if self.d_optimizer is not None else {},
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "config": self.cfg.to_dict(),
            "best_miou": self.best_miou,
            "skipped_steps": self.skipped_steps,
        }
        ckpt_lib.save_checkpoint(state, os.path.join(self.work_dir, ckpt_lib.LAST_CHECKPOINT))

    # ------------------------------------------------------------------ data
    def _train_loader(self, start_batch: int) -> DataLoader:
        cfg = self.cfg
        sampler = ResumableBatchSampler(len(self.train_set), self.per_rank_batch, self.dist.world_size,
                                        self.dist.rank, int(cfg.seed), start_batch)
        from sstkd.data import seed_worker

        nw = cfg.data.num_workers
        return DataLoader(EpochIndexed(self.train_set), batch_sampler=sampler, num_workers=nw,
                          pin_memory=self.device.type == "cuda", worker_init_fn=seed_worker,
                          # A private generator: building the loader must not draw from the global RNG.
                          generator=torch.Generator().manual_seed(int(cfg.seed)),
                          persistent_workers=False)

    def _val_loader(self) -> DataLoader:
        """This process's shard of the validation set (every sample exactly once over all shards)."""
        from sstkd.data import seed_worker

        e = self.cfg.eval
        n, world, rank = len(self.val_set), self.dist.world_size, self.dist.rank
        shard = self.val_set if world == 1 else Subset(self.val_set, range(rank, n, world))
        return DataLoader(shard, batch_size=e.batch_size, shuffle=False, num_workers=e.num_workers,
                          pin_memory=self.device.type == "cuda", worker_init_fn=seed_worker,
                          generator=torch.Generator().manual_seed(0))

    # ------------------------------------------------------------------ eval
    def evaluate(self) -> dict:
        """Evaluate the student on the validation split (sharded over processes; the
        evaluator sums the confusion matrices)."""
        from sstkd.engine.evaluator import evaluate

        e = self.cfg.eval
        was_training = self.student.training
        try:
            return evaluate(self.student, self._val_loader(), self.num_classes, mode=e.mode,
                            crop_size=tuple(e.crop_size), stride=tuple(e.stride), device=self.device,
                            ignore_index=self.cfg.train.ignore_index)
        finally:
            self.student.train(was_training)

    # ------------------------------------------------------------------- log
    def _log(self, msg: str) -> None:
        if self._log_fn is not None:
            self._log_fn(msg)

    def _write_metrics(self, record: Mapping) -> None:
        if not self.is_main:
            return
        with open(os.path.join(self.work_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = record.get("iteration", 0)
            prefix = record.get("type", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("iteration",):
                    self._tb.add_scalar(f"{prefix}/{k}", v, step)

    def _prepare_run_dir(self) -> None:
        self._tb = None
        if not self.is_main:
            return
        os.makedirs(self.work_dir, exist_ok=True)
        for name in _stale_temp_files(self.work_dir):
            os.remove(os.path.join(self.work_dir, name))
            self._log(f"removed {name}: left by an interrupted write")
        if self.overwrite and self.start_iter == 0:
            for name in RUN_FILES + (CHANGES_FILE,):
                if os.path.isfile(os.path.join(self.work_dir, name)):
                    os.remove(os.path.join(self.work_dir, name))
        if self._config_changes:
            record = {"iteration": self.start_iter, "time": time.time(), "resumed_from": self._resumed_from,
                      "changes": {k: [a, b] for k, (a, b) in self._config_changes.items()}}
            with open(os.path.join(self.work_dir, CHANGES_FILE), "a", encoding="utf-8") as f:
                f.write(json.dumps(record, default=str) + "\n")
            self._log(f"config changed on resume (recorded in {CHANGES_FILE}): {sorted(self._config_changes)}")
        save_config(self.cfg, os.path.join(self.work_dir, "config.yaml"))
        path = os.path.join(self.work_dir, "metrics.jsonl")
        if self.start_iter == 0:
            open(path, "w").close()
        elif os.path.isfile(path):
            # Drop what was logged after the checkpoint we resume from (it will be redone).
            with open(path, encoding="utf-8") as f:
                keep = [line for line in f if line.strip() and json.loads(line).get("iteration", 0) <= self.start_iter]
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(keep)
        if self.cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(os.path.join(self.work_dir, "tb"))
            except ImportError:
                warnings.warn("train.tensorboard: tensorboard is not installed; logging to metrics.jsonl only")

    # ------------------------------------------------------------------ step
    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _forward_terms(self, images: torch.Tensor, labels: torch.Tensor, model: nn.Module | None = None):
        """Forward of one micro-batch: (total loss, dict of scalar terms, student logits, teacher logits)."""
        t = self.cfg.train
        with self._autocast():
            s_out = (model or self.student_ddp)(images)
            terms = segmentation_loss(s_out, labels, t.aux_weight, t.ignore_index)
            total = terms.pop("seg")
            t_logits = None
            if self.distiller is not None:
                with torch.no_grad():
                    t_logits = self.teacher(images)["out"]
                d = self.distiller(s_out["out"], t_logits, self.s_tap.features.get("low"),
                                   self.t_tap.features.get("low"), target=labels)
                for k, v in d.items():
                    if k != "loss" and isinstance(v, torch.Tensor) and v.numel() == 1:
                        terms[k] = v
                total = total + d["loss"]
        terms["loss"] = total
        return total, terms, s_out, t_logits

    def _term_weights(self) -> dict[str, float]:
        """The weight of each term in the total loss (for naming the term behind a non-finite gradient)."""
        w = {"ce": 1.0, "aux": self.cfg.train.aux_weight}
        if self.distiller is not None:
            c = self.distiller.config
            w.update(pi=c.lambda_pi, ho=c.lambda_adv, str=c.lambda_str, sta=c.lambda_sta)
        return w

    def _blame_weighted_term(self, terms: Mapping[str, torch.Tensor]) -> str:
        """The term whose weighted value overflows (else the largest one) when only the total is non-finite."""
        weighted = {n: abs(float(terms[n].detach()) * w) for n, w in self._term_weights().items() if n in terms}
        if not weighted:
            return "loss"
        bad = [n for n, v in weighted.items() if not math.isfinite(v)]
        return bad[0] if bad else max(weighted, key=weighted.get)

    def _trained_params(self) -> list[nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _grads_nonfinite(self) -> bool:
        grads = [p.grad for p in self._trained_params() if p.grad is not None]
        return bool(grads) and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())

    def _blame_gradient(self, images: torch.Tensor, labels: torch.Tensor) -> str:
        """The first term whose (weighted) gradient is non-finite, from a fresh forward of the
        micro-batch (``autograd.grad``: no ``.grad`` is touched, no DDP hook fires)."""
        params = [p for p in self._trained_params() if p.requires_grad]
        _, terms, _, _ = self._forward_terms(images, labels, model=self.student)
        for name, weight in self._term_weights().items():
            if name not in terms or weight == 0 or not terms[name].requires_grad:
                continue
            grads = torch.autograd.grad(terms[name] * weight, params, retain_graph=True, allow_unused=True)
            if any(g is not None and not bool(torch.isfinite(g).all()) for g in grads):
                return name
        return "loss"  # each term's gradient is finite, their sum is not

    def _nonfinite_parameter(self) -> str | None:
        modules = [("", self.student)] + ([("distill.", self.distiller)] if self.distiller is not None else [])
        named = [(prefix + n, p) for prefix, m in modules for n, p in m.named_parameters()]
        finite = torch.stack([torch.isfinite(p).all() for _, p in named])
        if bool(finite.all()):  # one device -> host read per step
            return None
        return named[int((~finite).nonzero()[0, 0])][0]

    def _buffers(self) -> list[torch.Tensor]:
        mods = [self.student] + ([self.distiller] if self.distiller is not None else [])
        return [b for m in mods for b in m.buffers()]

    def _train_step(self, it: int, data_iter) -> dict[str, float] | None:
        """One optimizer step (``accumulate`` micro-batches). Returns the terms, or None when skipped.

        A non-finite loss term or gradient stops the run (:class:`NonFiniteLossError`) or, with
        ``on_nonfinite: skip``, skips the step without a trace: no update, and the BatchNorm
        statistics that its forwards moved are put back.
        """
        t = self.cfg.train
        accum = t.accumulate
        self.student.train()
        self.optimizer.zero_grad(set_to_none=True)
        saved = [b.clone() for b in self._buffers()] if t.on_nonfinite == "skip" else None
        sums: dict[str, torch.Tensor] = {}  # detached running sums over the micro-batches
        bad = None  # (kind, term, value) of the first non-finite value
        s_logits = t_logits = None
        for micro in range(accum):
            images, labels = next(data_iter)
            if bad is not None:
                continue  # keep consuming the stream so that data positions stay tied to iterations
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            last = micro == accum - 1
            sync = (self.student_ddp.no_sync() if self.dist.distributed and not last else contextlib.nullcontext())
            with sync:
                total, terms, s_out, t_logits = self._forward_terms(images, labels)
                found = _first_nonfinite(terms)
                if found is not None and found[0] == "loss":  # finite terms, non-finite total
                    found = (self._blame_weighted_term(terms), found[1])
                if dist_lib.any_across_ranks(found is not None, self.device):
                    bad = ("loss",) + (found or ("(another process)", float("nan")))
                    if self.dist.distributed:
                        # DDP expects a backward after a forward: push zeros through the graph.
                        zero = sum(torch.nan_to_num(v.float()).sum() for v in s_out.values()) * 0.0
                        zero.backward()
                    continue
                self.scaler.scale(total / accum).backward()
            # (fp16: the GradScaler finds and skips non-finite gradients itself)
            if not self.scaler.is_enabled():
                mine = self._grads_nonfinite()
                if dist_lib.any_across_ranks(mine, self.device):
                    term = self._blame_gradient(images, labels)  # on every rank: SyncBN forwards together
                    bad = ("gradient", term if mine else "(another process)", float("nan"))
                    continue
            for k, v in terms.items():
                sums[k] = v.detach().float() + sums[k] if k in sums else v.detach().float()
            s_logits = s_out["out"].detach()
        if bad is not None:
            kind, term, value = bad
            self._skips_in_a_row += 1
            if t.on_nonfinite == "stop":
                raise NonFiniteLossError(it + 1, term, value, kind=kind)
            if self._skips_in_a_row > t.max_consecutive_skips:
                raise NonFiniteLossError(it + 1, term, value, kind=f"{kind} in {self._skips_in_a_row} steps in a row "
                                         "(train.max_consecutive_skips): the run diverged")
            with torch.no_grad():
                for b, v in zip(self._buffers(), saved):
                    b.copy_(v)
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.scheduler.step()
            self._log(f"iteration {it + 1}: non-finite {kind} of term {term!r} = {value}; step skipped")
            record = {"type": "skip", "iteration": it + 1, "term": term}
            if kind != "loss":
                record["in"] = kind
            self._write_metrics(record)
            return None
        dist_lib.all_reduce_gradients(self.head_params)
        if t.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self._trained_params(), t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self._skips_in_a_row = 0
        broken = self._nonfinite_parameter()
        if broken is not None:  # finite gradients, non-finite weights: the step itself overflowed
            raise NonFiniteLossError(it + 1, f"parameter {broken}", float("nan"), kind="update")
        if self.d_optimizer is not None:
            d = self.distiller.discriminator_step(s_logits, t_logits, self.d_optimizer)
            sums.update({k: v.detach().float() * accum for k, v in d.items()})
        # One device -> host copy for all the terms.
        values = torch.stack([v.reshape(()) for v in sums.values()]).div_(accum).tolist()
        return dict(zip(sums, values))

    # ------------------------------------------------------------------- run
    def train(self) -> dict:
        """Run from ``start_iter`` to ``train.iterations``.

        Returns:
            A summary: ``iterations``, ``start_iteration``, ``sec_per_iter``
            (mean over the timed steps, excluding evaluation and
            checkpoints; the first step is excluded as warm-up when there
            are more), ``best_miou``, ``final_metrics`` (last evaluation),
            ``skipped_steps``, ``work_dir``.

        Raises:
            NonFiniteLossError: a loss term became NaN/Inf with ``on_nonfinite: stop``.
        """
        from tqdm.auto import tqdm

        cfg, t = self.cfg, self.cfg.train
        total_iters = t.iterations
        self._prepare_run_dir()
        if self._resumed_from:
            self._log(f"resumed from {self._resumed_from} at iteration {self.start_iter}")
        show_bar = bool(t.progress and self.is_main and sys.stderr.isatty())
        bar = tqdm(total=total_iters, initial=self.start_iter, disable=not show_bar, dynamic_ncols=True,
                   desc=cfg.name or "train", unit="it")
        loader = self._train_loader(self.start_iter * t.accumulate)
        data_iter = iter(loader)
        step_times: list[float] = []
        window: dict[str, float] = {}
        window_n, window_t = 0, 0.0
        final_metrics: dict = {}
        try:
            for it in range(self.start_iter, total_iters):
                lr = self.optimizer.param_groups[0]["lr"]
                t0 = time.perf_counter()
                terms = self._train_step(it, data_iter)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                dt = time.perf_counter() - t0
                step_times.append(dt)
                window_t += dt
                if terms is not None:
                    window_n += 1
                    for k, v in terms.items():
                        window[k] = window.get(k, 0.0) + v
                bar.update(1)
                done = it + 1
                if done % t.log_interval == 0 or done == total_iters:
                    avg = {k: v / max(window_n, 1) for k, v in window.items()}
                    record = {"type": "train", "iteration": done, "lr": lr, **avg,
                              "sec_per_iter": window_t / max(1, window_n), "time": time.time()}
                    self._write_metrics(record)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in avg.items() if k in ("loss", "ce", "pi", "ho",
                                                                                       "str", "sta")})
                    if not show_bar:
                        shown = " ".join(f"{k} {v:.4g}" for k, v in avg.items())
                        self._log(f"[{cfg['name']}] it {done}/{total_iters} lr {lr:.3g} {shown} "
                                  f"({record['sec_per_iter']:.3f} s/it)")
                    window, window_n, window_t = {}, 0, 0.0
                if (t.eval_interval and done % t.eval_interval == 0) or (
                        done == total_iters and t.eval_at_end):
                    final_metrics = self._evaluate_and_export(done)
                if done % t.checkpoint_interval == 0 or done == total_iters:
                    self._save_training_checkpoint(done)
        finally:
            bar.close()
            if self._tb is not None:
                self._tb.close()
        if self.is_main:
            ckpt_lib.export_student(self.student, self.model_args, os.path.join(self.work_dir, "final_student.pt"),
                                    iteration=total_iters, metrics=_plain_metrics(final_metrics))
        timed = step_times[1:] if len(step_times) > 1 else step_times
        return {
            "iterations": total_iters,
            "start_iteration": self.start_iter,
            "sec_per_iter": (sum(timed) / len(timed)) if timed else float("nan"),
            "best_miou": self.best_miou if self.best_miou >= 0 else None,
            "final_metrics": final_metrics,
            "skipped_steps": self.skipped_steps,
            "work_dir": self.work_dir,
        }

    def _evaluate_and_export(self, iteration: int) -> dict:
        metrics = self.evaluate()
        miou = float(metrics.get("mIoU", float("nan")))
        record = {"type": "eval", "iteration": iteration, **_plain_metrics(metrics, scalars_only=True)}
        self._write_metrics(record)
        self._log(f"[{self.cfg['name']}] eval at {iteration}: mIoU {miou:.4f}")
        if self.is_main and math.isfinite(miou) and miou > self.best_miou:
            ckpt_lib.export_student(self.student, self.model_args, os.path.join(self.work_dir, "best_student.pt"),
                                    iteration=iteration, metrics=_plain_metrics(metrics))
        if math.isfinite(miou) and miou > self.best_miou:  # identical on every rank (reduced metrics)
            self.best_miou = miou
        return metrics

    def close(self) -> None:
        """Remove hooks and leave the process group."""
        for tap in (self.s_tap, self.t_tap):
            if tap is not None:
                tap.remove()
        dist_lib.cleanup_distributed()


def _tap_channels(model: nn.Module, path: str) -> int:
    """Channels of the tapped stage, from one tiny forward in eval mode."""
    from sstkd.distill import FeatureTap

    was = model.training
    model.eval()
    p = next(model.parameters())
    try:
        with FeatureTap(model, {"low": path}) as tap, torch.no_grad():
            model(torch.zeros(1, 3, 64, 64, device=p.device, dtype=p.dtype))
            return int(tap["low"].shape[1])
    finally:
        model.train(was)


def _plain_metrics(metrics: Mapping, scalars_only: bool = False) -> dict:
    """Metrics as JSON/weights_only-safe plain values (tensors -> floats / lists)."""
    out: dict = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            v = v.item() if v.numel() == 1 else v.tolist()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        if scalars_only and not isinstance(v, (int, float)):
            continue
        if isinstance(v, (int, float, str, bool, list, tuple, type(None))) or isinstance(v, dict):
            out[k] = v
    return out


def train(cfg: Config | Mapping[str, Any], log: Callable[[str], None] | None = print, *, overwrite: bool = False,
          allow_changes: bool = False) -> dict:
    """Build a :class:`Trainer` from a resolved config, run it, and clean up."""
    trainer = Trainer(cfg, log=log, overwrite=overwrite, allow_changes=allow_changes)
    try:
        return trainer.train()
    finally:
        trainer.close()
