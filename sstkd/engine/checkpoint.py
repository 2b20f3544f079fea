"""Checkpoints: atomic writes, ``weights_only`` loads, RNG state capture and
the student-only export.

Every file is written to a temporary file in the same directory, flushed and
fsynced, then renamed over the target with ``os.replace`` (atomic on POSIX),
so a crash at any moment leaves either the previous file or the new one.
Everything stored is a tensor or a plain Python value (dict, list, tuple,
str, int, float, bool, None), so every file loads with
``torch.load(weights_only=True)``.

Student-only export (``best_student.pt``, ``final_student.pt``)::

    {"format": "sstkd-student", "model": state_dict,
     "model_args": {"name", "num_classes", "base_width", "output_stride", "aux"},
     "iteration": int, "metrics": {...}}

loads with nothing but ``build_model(**ckpt["model_args"])`` and
``load_state_dict(ckpt["model"])`` (see :func:`load_student`).
"""
from __future__ import annotations

import os
import random
from typing import Any, Mapping

import numpy as np
import torch

from sstkd.models.state_dict import load_file

__all__ = [
    "CheckpointError",
    "first_nonfinite",
    "save_checkpoint",
    "load_checkpoint",
    "find_last_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "export_student",
    "load_student",
    "extract_state_dict",
    "LAST_CHECKPOINT",
]

LAST_CHECKPOINT = "last.pt"
STUDENT_FORMAT = "sstkd-student"
TRAINING_FORMAT = "sstkd-training"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not of the expected kind."""


def first_nonfinite(obj: Any, _prefix: str = "") -> str | None:
    """The key path of the first floating-point tensor in ``obj`` (nested dicts / lists) holding
    NaN or Inf, or None."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            return None if bool(torch.isfinite(obj).all()) else (_prefix or "<tensor>")
        return None
    if isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        found = first_nonfinite(v, f"{_prefix}.{k}" if _prefix else str(k))
        if found is not None:
            return found
    return None


def save_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Save ``obj`` to ``path`` atomically (temp file in the same directory,
    fsync, ``os.replace``). A checkpoint never holds NaN or Inf: such an
    ``obj`` is refused and the file at ``path`` is left as it was.

    Raises:
        TypeError: ``obj`` is not a mapping.
        CheckpointError: a tensor of ``obj`` holds a non-finite value (named).
    """
    if not isinstance(obj, Mapping):
        raise TypeError(f"obj: expected a mapping, got {type(obj).__name__}")
    path = os.fspath(path)
    bad = first_nonfinite(obj)
    if bad is not None:
        raise CheckpointError(f"not saving {path}: {bad} holds a non-finite value (NaN or Inf); "
                              "the previous file is left as it was")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(dict(obj), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    # Make the rename itself durable.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: the file is missing or cannot be read (truncated,
            corrupt, or holding objects that are not plain data).
    """
    path = os.fspath(path)
    try:
        obj = load_file(path, map_location)
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict, got {type(obj).__name__}")
    return obj


def find_last_checkpoint(work_dir: str | os.PathLike) -> str | None:
    """The run's latest training checkpoint (``<work_dir>/last.pt``) or None."""
    path = os.path.join(os.fspath(work_dir), LAST_CHECKPOINT)
    return path if os.path.isfile(path) else None


# --------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict:
    """The state of every RNG the training loop touches, as tensors and plain
    values (``weights_only``-loadable): torch (CPU and every CUDA device),
    numpy's global RNG, Python's ``random``."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_state[0]),
            "key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64).copy()),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured.

    Raises:
        CheckpointError: ``state`` lacks a part or holds malformed values.
    """
    try:
        torch.set_rng_state(state["torch"].cpu())
        n = state["numpy"]
        np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), int(n["pos"]),
                             int(n["has_gauss"]), float(n["cached_gaussian"])))
        p = state["python"]
        random.setstate((int(p["version"]), tuple(int(v) for v in p["internal"].tolist()),
                         p["gauss_next"]))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"malformed RNG state in checkpoint: {type(e).__name__}: {e}") from None
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        n = min(len(cuda_states), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(cuda_states[i].cpu(), i)


# ------------------------------------------------------------ student-only export


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def export_student(model: torch.nn.Module, model_args: Mapping[str, Any], path: str | os.PathLike,
                   *, iteration: int | None = None, metrics: Mapping[str, Any] | None = None) -> None:
    """Write a student-only checkpoint: weights + the ``build_model`` arguments.

    Args:
        model: the student (a DDP wrapper is unwrapped).
        model_args: keyword arguments of ``build_model`` that rebuild it
            (``name``, ``num_classes``, ``base_width``, ...); plain values only.
        path: destination file.
        iteration, metrics: recorded alongside (plain values).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(model_args, Mapping) or "name" not in model_args or "num_classes" not in model_args:
        raise ValueError("model_args: needs at least 'name' and 'num_classes'")
    state = {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}
    save_checkpoint({
        "format": STUDENT_FORMAT,
        "model": state,
        "model_args": dict(model_args),
        "iteration": iteration,
        "metrics": dict(metrics or {}),
    }, path)


def extract_state_dict(ckpt: Mapping[str, Any]) -> dict:
    """The model weights of a student export, a training checkpoint or a bare
    state dict (under ``model``, ``student`` or ``state_dict``), with a DDP
    wrapper's ``module.`` prefix removed (by :func:`sstkd.models.read_state_dict`,
    the one place state dicts are unwrapped)."""
    from sstkd.models.weights import read_state_dict

    try:
        return read_state_dict(ckpt)
    except (TypeError, ValueError) as e:
        raise CheckpointError(str(e)) from None


def load_student(path: str | os.PathLike, map_location: Any = "cpu") -> torch.nn.Module:
    """Rebuild a model from a student-only export (or a training checkpoint
    that records ``model_args``) with ``build_model`` + ``load_state_dict``."""
    from sstkd.models import build_model

    ckpt = load_checkpoint(path, map_location=map_location)
    args = ckpt.get("model_args")
    if not isinstance(args, Mapping):
        raise CheckpointError(f"checkpoint {os.fspath(path)}: no 'model_args' to rebuild the model from")
    model = build_model(**args)
    model.load_state_dict(extract_state_dict(ckpt))
    return model
