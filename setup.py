"""Install sstkd; build the CUDA extension ``sstkd._C`` when asked or possible.

SSTKD_BUILD_CUDA:
  0     never build the extension (pure-Python install);
  1     build it, fail loudly if that is impossible;
  auto  (default) build it when torch is a CUDA build and nvcc is found,
        otherwise skip with one line.
TORCH_CUDA_ARCH_LIST and MAX_JOBS are honoured by torch's BuildExtension.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _build_flags():
    """``csrc/sstkd_build.py``, loaded by path as the JIT loader (sstkd.ops.backends.cuda) loads it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_sstkd_build", os.path.join(HERE, "csrc", "sstkd_build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cuda_extension():
    mode = os.environ.get("SSTKD_BUILD_CUDA", "auto").lower()
    if mode == "0":
        print("sstkd: SSTKD_BUILD_CUDA=0, skipping the CUDA extension sstkd._C", file=sys.stderr)
        return [], {}
    sources = sorted(glob.glob(os.path.join("csrc", "*.cu")) + glob.glob(os.path.join("csrc", "*.cpp")))
    why = None
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        why = "torch is not importable in the build environment (use --no-build-isolation)"
    else:
        if torch.version.cuda is None:
            why = f"torch {torch.__version__} is not a CUDA build"
        elif cpp_extension.CUDA_HOME is None:
            why = "no CUDA toolkit found (set CUDA_HOME)"
        elif not sources:
            why = "csrc/ has no sources"
    if why is not None:
        if mode == "1":
            raise RuntimeError(f"SSTKD_BUILD_CUDA=1 but the CUDA extension cannot be built: {why}")
        print(f"sstkd: skipping the CUDA extension sstkd._C: {why}", file=sys.stderr)
        return [], {}
    extension_kwargs = _build_flags().extension_kwargs  # csrc/ build flags shared with the JIT path

    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # torch derives the arch list from the visible GPUs; with none it would fail.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        print("sstkd: no GPU visible, building sstkd._C for TORCH_CUDA_ARCH_LIST=8.0;9.0+PTX", file=sys.stderr)

    ext = cpp_extension.CUDAExtension("sstkd._C", sources, **extension_kwargs())
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = _cuda_extension()

setup(
    name="sstkd",
    version="0.1.0",
    description="Structural and Statistical Texture Knowledge Distillation with fused Triton/CUDA texture kernels",
    python_requires=">=3.10",
    packages=find_packages(include=["sstkd", "sstkd.*"]) + ["sstkd.kernels"],
    package_dir={"sstkd.kernels": "kernels"},
    package_data={"sstkd": ["py.typed"]},
    install_requires=["torch", "numpy", "pyyaml", "pillow", "tqdm"],
    extras_require={"triton": ["triton"], "test": ["pytest", "pytest-benchmark", "scikit-image", "kornia"]},
    entry_points={"console_scripts": ["sstkd=sstkd.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
