"""The CUDA builds the tests need, started in the background when the test session starts.

A cold cache (a fresh machine or new sources) builds the CUDA extension for sm_90, the host
emulation library and the sm_90 probes — about a minute of nvcc. The tests run one at a time on
one core; this process builds on the other (``MAX_JOBS=1``) while they do. The tests that need
the builds wait for it first (``conftest.wait_for_prebuild``), then load them from the cache —
or, if something failed here, build them themselves and report the failure as before.

Run by tests/conftest.py as ``python tests/prebuild.py``; each step prints one line. A session that
needed no build leaves it to finish on its own (killing it mid-build would leave torch's build lock
behind, on which the next build would wait forever).
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import subprocess
import sys
import time
import traceback

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")


def host_emulation_lib() -> str:
    """The path of the host emulation library (csrc/tests/host_emulation.cu compiled for the host),
    built once per content of its sources (cached with the extension's builds)."""
    from sstkd._util import cache_dir
    from sstkd.ops.backends import cuda

    sb = cuda.build_flags()
    home = sb.cuda_home()
    src = os.path.join(CSRC, "tests", "host_emulation.cu")
    h = hashlib.sha256()
    for f in sorted(glob.glob(os.path.join(CSRC, "*.cuh")) + glob.glob(os.path.join(CSRC, "*.h"))) + [src]:
        with open(f, "rb") as fh:
            h.update(fh.read())
    h.update(home.encode())
    out_dir = os.path.join(cache_dir(), f"emu-{h.hexdigest()[:16]}")
    lib = os.path.join(out_dir, "libsstkd_emu.so")
    if not os.path.exists(lib):
        os.makedirs(out_dir, exist_ok=True)
        tmp = f"{lib}.{os.getpid()}.tmp"
        cmd = [os.path.join(home, "bin", "nvcc"), "-O2", "-std=c++17", "-shared", "-Xcompiler", "-fPIC"]
        cmd += [f"-I{d}" for d in sb.include_dirs(home)] + [src, "-o", tmp]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"building the host emulation failed:\n{r.stdout}\n{r.stderr}")
        os.replace(tmp, lib)
    return lib


def _extension():
    import torch  # noqa: F401  (before the extension)
    from sstkd.ops.backends import cuda

    cuda.get()


def _probes():
    from sstkd.benchmarks import cost
    from sstkd.benchmarks.kernel_facts import cuda_dfb_jobs, measure

    measure(cuda_dfb_jobs())
    cost.cuda_kernel_facts(90)


def main() -> int:
    steps = [("CUDA extension (sm_90)", _extension), ("host emulation", lambda: ctypes.CDLL(host_emulation_lib())),
             ("sm_90 probes and kernel facts", _probes)]
    for name, step in steps:
        t0 = time.monotonic()
        try:
            step()
            print(f"prebuild: {name}: ok ({time.monotonic() - t0:.1f} s)", flush=True)
        except Exception:
            print(f"prebuild: {name}: failed (the tests build it themselves)\n{traceback.format_exc()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
