"""Build flags for sstkd._C, shared by setup.py and the JIT loader."""
import os
import sysconfig


def include_dirs():
    """Extra include dirs: the pip CUDA wheels' headers (cuBLAS/cuSPARSE), when present."""
    dirs = []
    site = sysconfig.get_paths()["purelib"]
    for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include"):
        d = os.path.join(site, sub)
        if os.path.isdir(d):
            dirs.append(d)
    return dirs


def extension_kwargs():
    return {
        "include_dirs": include_dirs(),
        "extra_compile_args": {"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "-std=c++17"]},
    }
