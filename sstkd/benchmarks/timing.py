"""Timing and peak memory of one callable, the way every benchmark here measures.

* GPU: one pair of CUDA events around each call (``method="events"``, the
  default) or ``triton.testing.do_bench`` (``method="do_bench"``; imported only
  when used, so importing this module never imports Triton).
* CPU: ``time.perf_counter`` around each call after a warm-up.
* Each call gets the next of several input copies (``inputs[i % len(inputs)]``)
  so a small working set cannot stay in cache between calls and flatter the
  time.
* Statistics: median and interquartile range (robust to the stragglers of a
  shared machine), plus min / mean / max.

Peak memory is the memory allocated *during* one call beyond what was
allocated before it: ``torch.cuda.max_memory_allocated`` on a GPU, the CPU
allocator's events from ``torch.profiler`` (``profile_memory=True``) on the
CPU, ``None`` where neither applies.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import torch

METHODS = ("auto", "events", "do_bench", "perf_counter")


@dataclasses.dataclass(frozen=True)
class TimingStats:
    """Summary of per-call times in milliseconds."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    mean_ms: float
    max_ms: float
    repeats: int
    method: str

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["iqr_ms"] = self.iqr_ms
        return d


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of an already sorted sequence (numpy's default rule)."""
    pos = (len(sorted_xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def summarize(samples_ms: Sequence[float], method: str) -> TimingStats:
    """Median / quartiles / min / mean / max of ``samples_ms``.

    Raises:
        ValueError: ``samples_ms`` is empty or holds a negative or non-finite value.
    """
    xs = sorted(float(s) for s in samples_ms)
    if not xs:
        raise ValueError("samples_ms: no samples")
    if not all(math.isfinite(s) and s >= 0 for s in xs):
        raise ValueError("samples_ms: samples must be finite and >= 0")
    return TimingStats(
        median_ms=_quantile(xs, 0.5), q1_ms=_quantile(xs, 0.25), q3_ms=_quantile(xs, 0.75),
        min_ms=xs[0], mean_ms=statistics.fmean(xs), max_ms=xs[-1], repeats=len(xs), method=method,
    )


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued GPU work on ``device`` (no-op on the CPU)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _check_args(fn, inputs, warmup, repeat, method):
    if not callable(fn):
        raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
    if not isinstance(inputs, Sequence) or isinstance(inputs, (str, bytes)) or len(inputs) == 0:
        raise ValueError("inputs: expected a non-empty sequence of input copies")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup: expected an int >= 0, got {warmup!r}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat: expected an int >= 1, got {repeat!r}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")


def time_fn(
    fn: Callable[[Any], Any],
    inputs: Sequence[Any],
    *,
    device: torch.device | str | None = None,
    warmup: int = 3,
    repeat: int = 20,
    method: str = "auto",
    max_seconds: float | None = None,
    min_repeat: int = 3,
    warmup_seconds: float = 0.0,
) -> TimingStats:
    """Time ``fn(inputs[i % len(inputs)])`` and summarize per-call times.

    Args:
        fn: called with one input copy per call; its result is discarded.
        inputs: the input copies to rotate through (at least one).
        device: where ``fn`` runs (``None``: CPU); decides the clock.
        warmup: untimed calls first (compilation, autotuning, allocator).
        repeat: timed calls.
        method: ``"auto"`` (events on CUDA, perf_counter on the CPU),
            ``"events"``, ``"do_bench"`` (CUDA only) or ``"perf_counter"``.
        max_seconds: stop after this much timed wall time once ``min_repeat``
            samples exist (keeps slow CPU cases bounded).
        warmup_seconds: keep warming up (after the ``warmup`` calls) until this
            much wall time has passed, so the first cell of a process is not
            timed while caches, thread pools and the allocator settle.

    Returns:
        :class:`TimingStats` in milliseconds.

    Raises:
        TypeError / ValueError naming the bad argument; ``ValueError`` for a
        CUDA-only method on a CPU device.
    """
    _check_args(fn, inputs, warmup, repeat, method)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if method == "auto":
        method = "events" if dev.type == "cuda" else "perf_counter"
    if method in ("events", "do_bench") and dev.type != "cuda":
        raise ValueError(f"method: {method!r} needs a CUDA device, got {dev}")
    n = len(inputs)
    if method == "do_bench":
        return _time_do_bench(fn, inputs, warmup, repeat)

    t_warm = time.perf_counter()
    i = 0
    while i < warmup or (time.perf_counter() - t_warm < warmup_seconds and i < 1000):
        fn(inputs[i % n])
        i += 1
        if i >= warmup and warmup_seconds:
            synchronize(dev)
    warmup = i
    synchronize(dev)
    samples: list[float] = []
    t_start = time.perf_counter()
    if method == "events":
        pairs = []
        for i in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(inputs[(warmup + i) % n])
            end.record()
            pairs.append((start, end))
            if max_seconds is not None and i + 1 >= min_repeat and time.perf_counter() - t_start > max_seconds:
                break
        synchronize(dev)
        samples = [s.elapsed_time(e) for s, e in pairs]
    else:
        for i in range(repeat):
            t0 = time.perf_counter()
            fn(inputs[(warmup + i) % n])
            synchronize(dev)
            samples.append((time.perf_counter() - t0) * 1e3)
            if max_seconds is not None and i + 1 >= min_repeat and time.perf_counter() - t_start > max_seconds:
                break
    return summarize(samples, method)


def _time_do_bench(fn, inputs, warmup, repeat) -> TimingStats:
    from triton.testing import do_bench  # only here: importing triton is slow and optional

    counter = [0]

    def call():
        fn(inputs[counter[0] % len(inputs)])
        counter[0] += 1

    # do_bench takes warm-up / repetition budgets in milliseconds and clears L2 between calls.
    times = do_bench(call, warmup=max(warmup, 1) * 5, rep=max(repeat, 1) * 5, return_mode="all")
    return summarize(times, "do_bench")


# ----------------------------------------------------------------------------- memory


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the C++ profiler's start/stop log lines (written to fd 2, not sys.stderr)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters)
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = fn()
            del out
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def measure_peak_memory(fn: Callable[[], Any], device: torch.device | str | None = None) -> int | None:
    """Bytes allocated at the peak of one call of ``fn()`` beyond those allocated before it.

    GPU: ``torch.cuda.max_memory_allocated`` after a reset. CPU: the CPU
    allocator's alloc/free events recorded by ``torch.profiler``. Returns
    ``None`` when it cannot be measured (other device types, a profiler
    without memory events). The result of ``fn`` is freed before returning,
    so its outputs count while they were alive.
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        out = fn()
        synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - base
        del out
        return int(peak)
    if dev.type == "cpu":
        try:
            return int(_cpu_peak_bytes(fn))
        except (AttributeError, RuntimeError):  # profiler API without kineto memory events
            return None
    return None


def time_interleaved(
    fns: dict[str, tuple[Callable[[Any], Any], Sequence[Any]]],
    *,
    device: torch.device | str | None = None,
    warmup: int = 2,
    rounds: int = 10,
    per_round: int = 1,
    max_seconds: float | None = None,
) -> dict[str, TimingStats]:
    """Time several callables in alternation (``{name: (fn, input copies)}``), so that load that
    comes and goes on a shared machine hits them alike; one :class:`TimingStats` per name.

    Each round times ``per_round`` calls of every callable in turn (synchronizing
    after each call on a GPU). ``max_seconds`` stops after that much wall time
    once 3 rounds are done.
    """
    if not fns:
        raise ValueError("fns: nothing to time")
    for name, (fn, inputs) in fns.items():
        _check_args(fn, inputs, warmup, max(rounds, 1), "auto")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    calls = {name: 0 for name in fns}
    for name, (fn, inputs) in fns.items():
        for i in range(warmup):
            fn(inputs[i % len(inputs)])
            calls[name] += 1
    synchronize(dev)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    t_start = time.perf_counter()
    for r in range(rounds):
        for name, (fn, inputs) in fns.items():
            for _ in range(per_round):
                inp = inputs[calls[name] % len(inputs)]
                calls[name] += 1
                t0 = time.perf_counter()
                fn(inp)
                synchronize(dev)
                samples[name].append((time.perf_counter() - t0) * 1e3)
        if max_seconds is not None and r + 1 >= 3 and time.perf_counter() - t_start > max_seconds:
            break
    return {name: summarize(s, "perf_counter, interleaved") for name, s in samples.items()}
