"""Benchmark harness behind ``sstkd bench`` and ``bench/``.

* :mod:`~sstkd.benchmarks.timing`     median / IQR timing (CUDA events or perf_counter), peak memory
* :mod:`~sstkd.benchmarks.roofline`   measured copy bandwidth and the bytes each op must move
* :mod:`~sstkd.benchmarks.op_suite`   op × backend × shape × dtype × mode matrix
* :mod:`~sstkd.benchmarks.peers`      kornia's Laplacian pyramid, a dense STLNet-style QCO
* :mod:`~sstkd.benchmarks.train_step` distillation overhead of one training step
* :mod:`~sstkd.benchmarks.report`     JSON + Markdown + PNG under ``bench/results/``
* :mod:`~sstkd.benchmarks.compile_facts` sm_90 / sm_80 registers, spills, SASS mix of a Triton kernel, no GPU needed

Nothing here imports Triton or the CUDA extension at import time; missing
ops, models or backends are reported as skipped rows with the reason.
"""
from sstkd.benchmarks.timing import TimingStats, measure_peak_memory, summarize, time_fn  # noqa: F401
