"""sstkd: Structural and Statistical Texture Knowledge Distillation for semantic segmentation.

Importing this package never needs a GPU, a CUDA toolkit or a built extension:
optional backends (Triton kernels, the CUDA extension) load lazily, and the
subpackages (``sstkd.ops``, ``sstkd.models``, ...) are imported on first use.
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = ("ops", "filters", "models", "data", "distill", "engine")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"sstkd.{name}")
    raise AttributeError(f"module 'sstkd' has no attribute {name!r}")


__all__ = list(_SUBMODULES) + ["__version__"]
