import os
import subprocess

# The Triton kernels run in Triton's CPU interpreter when there is no GPU. This
# must be set before any triton kernel module is imported.
try:
    import torch

    _has_gpu = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _has_gpu = False
if not _has_gpu:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if not _has_gpu:
    import interpreter_speed  # noqa: E402

    interpreter_speed.lighten()  # the same bits, ≈ 2.5x faster (tests/interpreter_speed.py)


# The CUDA builds (extension, host emulation, sm_90 probes) run in a background process from the start
# of the session (tests/prebuild.py), on the core the one-at-a-time tests leave idle; the test files
# that need them run last, and wait for it first.
_PREBUILD: dict = {}
_NEEDS_BUILDS = {"cuda_ext", "emu", "cuda_rows"}


def pytest_sessionstart(session):
    if _has_gpu or os.environ.get("SSTKD_TEST_PREBUILD") == "0":
        return
    from sstkd.ops.backends import cuda

    if not cuda.jit_available()[0]:
        return
    import sys
    import tempfile

    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, MAX_JOBS="1", TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"),
               PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in [here, *sys.path]))
    log = tempfile.TemporaryFile()
    _PREBUILD.update(log=log, proc=subprocess.Popen([sys.executable, os.path.join(here, "prebuild.py")], env=env,
                                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log))


def wait_for_prebuild() -> None:
    """Let the background CUDA builds finish (their results are then in the cache)."""
    proc = _PREBUILD.pop("proc", None)
    if proc is not None:
        try:
            proc.wait(timeout=1200)
        except subprocess.TimeoutExpired:  # the tests build themselves and report what hangs
            pass


def pytest_sessionfinish(session, exitstatus):
    # A selection that needed no build does not wait for it, nor kills it: a build killed mid-way
    # would leave torch's build lock behind, and the next build would wait on it forever. It
    # finishes on its own (a minute at most), and the next session finds the cache warm.
    _PREBUILD.pop("proc", None)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
    # whole files, in their order, so that module-scoped fixtures are still set up once
    late = {item.path for item in items if _NEEDS_BUILDS & set(getattr(item, "fixturenames", ()))}
    items.sort(key=lambda item: item.path in late)


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Every test starts from seed 0 and one intra-op thread: the shapes here are tiny, and on a
    busy 2-core machine two OpenMP threads spin-wait on each other (10-100x slower)."""
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cuda_build_unavailable() -> str | None:
    """Why the CUDA extension cannot be built here (no toolkit, CPU-only torch), or None. Anything else
    that stops the build fails the test: this machine should be able to build it."""
    from sstkd.ops.backends import cuda

    ok, why = cuda.jit_available()
    if ok:
        return None
    if "CUDA toolkit" in why or "not a CUDA build" in why or "CUDA_HOME" in why:
        return f"cannot build the CUDA extension here: {why}"
    pytest.fail(f"the CUDA extension should be buildable here but is not: {why}")


@pytest.fixture(scope="session")
def cuda_ext():
    """The CUDA extension, JIT-built for sm_90 only (no GPU needed: its Meta implementations, its
    sm_90 facts; cached in ~/.cache/sstkd across sessions and checkouts)."""
    why = cuda_build_unavailable()
    if why:
        pytest.skip(why)
    wait_for_prebuild()
    from sstkd.ops.backends import cuda

    old = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    try:
        return cuda.get()
    finally:
        if old is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
