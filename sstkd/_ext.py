"""Lazy access to the CUDA extension ``sstkd._C`` (never imported at package import)."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def _load():
    try:
        from sstkd import _C  # noqa: F401
    except ImportError as e:
        return None, f"sstkd._C is not built ({e}); reinstall with SSTKD_BUILD_CUDA=1"
    return _C, None


def load_error() -> str | None:
    """None when the extension is importable, else why not."""
    return _load()[1]


def get():
    ext, err = _load()
    if ext is None:
        raise RuntimeError(err)
    return ext
