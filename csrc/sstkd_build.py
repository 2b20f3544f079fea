"""Build inputs of sstkd._C, shared by setup.py and the JIT loader (sstkd.ops.backends.cuda).

Both load this file by path (importlib), not as a package module.

Layout: kernel-only translation units ``csrc/*.cu`` (no torch headers, a few
seconds each per arch) and one binding file ``csrc/bindings.cpp`` (torch
headers, compiled once by the host compiler). ``csrc/tests/`` is not part of
the extension.

No ``-std=`` flag is passed: torch's build helpers pick the standard its
headers need (C++17 up to torch 2.9, C++20 after).
"""
import glob
import hashlib
import os
import shutil
import sysconfig

CSRC = os.path.dirname(os.path.abspath(__file__))


def include_dirs(home=None):
    """Extra include dirs: ``csrc/`` itself, plus the pip CUDA wheels' headers
    (``nvidia/cu13/include``, ``nvidia/cuda_runtime/include``) only when the
    toolkit ``home`` (default: :func:`cuda_home`) lacks ``cuda_runtime.h``.

    Our sources include only the CUDA runtime headers (not cuBLAS/cuSPARSE),
    and putting a wheel's headers of another CUDA release before the
    toolkit's would mix versions.
    """
    dirs = [CSRC]
    home = home or cuda_home()
    if home and _has_runtime_headers(home):
        return dirs
    site = sysconfig.get_paths()["purelib"]
    for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include"):
        d = os.path.join(site, sub)
        if os.path.isdir(d):
            dirs.append(d)
    return dirs


def sources(relative_to=None):
    """The extension's sources (``csrc/*.cu`` + ``csrc/*.cpp``), sorted; absolute, or relative to ``relative_to``."""
    files = sorted(glob.glob(os.path.join(CSRC, "*.cu")) + glob.glob(os.path.join(CSRC, "*.cpp")))
    if relative_to is not None:
        files = [os.path.relpath(f, relative_to) for f in files]
    return files


def build_inputs():
    """Every file whose content changes the built library (sources + headers + this file)."""
    pats = ("*.cu", "*.cpp", "*.h", "*.cuh")
    files = sorted(f for p in pats for f in glob.glob(os.path.join(CSRC, p)))
    return files + [os.path.abspath(__file__)]


def source_hash():
    """sha256 over the names and contents of :func:`build_inputs` (hex, 16 chars)."""
    h = hashlib.sha256()
    for f in build_inputs():
        h.update(os.path.basename(f).encode())
        with open(f, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


def _has_runtime_headers(home):
    return os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))


def _is_toolkit(home):
    return bool(home) and os.path.isfile(os.path.join(home, "bin", "nvcc")) and _has_runtime_headers(home)


def cuda_home(detected=None):
    """The CUDA toolkit root to build with, or None.

    ``CUDA_HOME``/``CUDA_PATH`` win when set (None if they name no toolkit:
    no ``bin/nvcc`` or ``include/cuda_runtime.h``). Otherwise torch's guess
    (``detected``: the parent of the ``nvcc`` on PATH) is used only when it is
    a real toolkit root: a wrapper script such as ``/usr/local/bin/nvcc`` would
    make it ``/usr/local``, which holds neither the headers nor
    ``lib64/libcudart``; then the directory of the resolved nvcc and
    ``/usr/local/cuda`` are tried.
    """
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env:
        return env if _is_toolkit(env) else None
    candidates = [detected]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        # A shell wrapper that execs the real nvcc: read its target.
        try:
            with open(nvcc, "rb") as fh:
                head = fh.read(512)
            if head.startswith(b"#!"):
                for tok in head.decode(errors="ignore").split():
                    if tok.endswith("/bin/nvcc") and os.path.isabs(tok):
                        candidates.append(os.path.dirname(os.path.dirname(tok)))
        except OSError:
            pass
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if _is_toolkit(c):
            return c
    return None


def nvcc_flags():
    # -lineinfo: source lines in compute-sanitizer / Nsight reports, no runtime cost.
    return ["-O3", "-lineinfo"]


def cxx_flags():
    return ["-O3"]


def extension_kwargs():
    """kwargs of ``torch.utils.cpp_extension.CUDAExtension`` (setup.py).

    Names the resolved toolkit's include and library directories too, so the
    build works where torch's own guess of the toolkit root is wrong (an nvcc
    wrapper script on PATH) and CUDA_HOME is not set.
    """
    home = cuda_home()
    inc = include_dirs(home)
    libs = []
    if home:
        inc.append(os.path.join(home, "include"))
        libs = [d for d in (os.path.join(home, "lib64"), os.path.join(home, "lib")) if os.path.isdir(d)]
    return {
        "include_dirs": inc,
        "library_dirs": libs,
        "extra_compile_args": {"cxx": cxx_flags(), "nvcc": nvcc_flags()},
    }
