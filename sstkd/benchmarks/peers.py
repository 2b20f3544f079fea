"""Peers timed side by side with our ops, in the same run and at the same shapes.

* **kornia's Laplacian pyramid**: ``kornia.geometry.transform.build_laplacian_pyramid(x, 2)``
  (one bandpass level + the decimated image, 5-tap Gaussian, reflect border)
  against one :func:`sstkd.ops.lp_dec` level (9/7 filters, periodic border).
  Target (issue 2, CPU, float32, forward): ours ≤ 1.5× kornia's time.
* **a dense STLNet-style QCO**: :func:`stlnet_dense_qco` builds the
  ``pixels × levels`` encoding and re-projects with a dense batched matmul,
  as STLNet's public code does. Ours is :func:`sstkd.ops.quantize_count` +
  :func:`sstkd.ops.reproject` with the same ``"stlnet"`` encoding (the outputs
  are compared, so both compute the same thing). Target (issue 2, CPU,
  float32, forward): ≥ 3× faster and ≥ 4× less peak memory.

Targets are judged on the forward rows; ``fwd+bwd`` rows are reported for
information.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Sequence

import torch

from sstkd._util import tensor_leaves
from sstkd.benchmarks.timing import measure_peak_memory, time_interleaved

LP_MAX_TIME_RATIO = 1.5  # ours / kornia
QCO_MIN_SPEEDUP = 3.0  # dense / ours
QCO_MIN_MEM_RATIO = 4.0  # dense peak / our peak


def stlnet_dense_qco(s: torch.Tensor, levels: int, table: torch.Tensor):
    """STLNet's QCO with dense tensors: ``(centers, hist, reprojected)``.

    Follows STLNet's ``QCO_1d``: uniform centers
    ``c_n = smin + (2n + 1)/(2L) · (smax − smin)``, the encoding
    ``quant = (1 − |c_n − s_i|) · [1 − |c_n − s_i| > 1 − Δ]`` materialized as a
    ``(B, N, L)`` tensor, ``hist = Σ_i quant / Σ quant``, and the re-projection
    ``table @ quantᵀ`` as one dense ``bmm``.

    Args:
        s: ``(B, N)`` intensities.
        levels: ``L``.
        table: ``(B, D, L)``.

    Returns:
        ``centers (B, L)``, ``hist (B, L)``, ``out (B, D, N)``.
    """
    if not isinstance(s, torch.Tensor) or s.dim() != 2:
        raise ValueError(f"s: expected a (B, N) tensor, got {getattr(s, 'shape', type(s).__name__)}")
    if not isinstance(table, torch.Tensor) or table.dim() != 3 or table.shape[0] != s.shape[0] or table.shape[2] != levels:
        raise ValueError(f"table: expected ({s.shape[0]}, D, {levels}), got {getattr(table, 'shape', None)}")
    smin = s.detach().min(-1, keepdim=True).values
    smax = s.detach().max(-1, keepdim=True).values
    q = torch.arange(levels, device=s.device, dtype=s.dtype)
    centers = (2 * q + 1) / (2 * levels) * (smax - smin) + smin  # (B, L)
    delta = (centers[:, 1] - centers[:, 0]).view(-1, 1, 1)
    quant = 1 - (centers.unsqueeze(1) - s.unsqueeze(-1)).abs()  # (B, N, L): the dense encoding
    quant = quant * (quant > 1 - delta)
    hist = quant.sum(1)
    hist = hist / hist.sum(-1, keepdim=True)
    out = torch.bmm(table, quant.transpose(1, 2))  # (B, D, N)
    return centers, hist, out


def ours_qco(ops, s: torch.Tensor, levels: int, table: torch.Tensor, backend: str = "torch"):
    """Our ``quantize_count`` + ``reproject`` with STLNet's encoding: ``(centers, hist, out)``."""
    centers, hist = ops.quantize_count(s, levels, kernel="stlnet", backend=backend)
    out = ops.reproject(table, s, centers, kernel="stlnet", backend=backend)
    return centers, hist, out


@dataclasses.dataclass
class PeerCase:
    """Ours vs a peer on the same inputs: ``make(device, dtype, gen) -> inputs``."""

    name: str
    shape: str
    make: Callable[[torch.device, torch.dtype, torch.Generator], list]
    ours: Callable[[list], Any]
    peer: Callable[[list], Any]
    diff: tuple[int, ...]
    compare: Callable[[Any, Any], float] | None  # max abs difference of comparable outputs
    target: str
    judge: Callable[[float, float], bool]  # (time ours/peer, peak mem peer/ours) -> met


def _kornia_pyramid():
    try:
        mod = importlib.import_module("kornia.geometry.transform")
        return mod.build_laplacian_pyramid, None
    except Exception as e:
        return None, f"kornia is unavailable: {type(e).__name__}: {e}"


def peer_cases(image_shape: Sequence[int], qco_shape: Sequence[int], levels: int = 128, table_channels: int = 64,
               ops=None) -> tuple[list[PeerCase], list[str]]:
    """The peer comparisons at these shapes, and the reasons for any left out.

    Args:
        image_shape: ``(B, C, H, W)`` for ``lp_dec`` vs kornia.
        qco_shape: ``(B, N)`` intensities for the QCO comparison.
        levels: quantization levels ``L``.
        table_channels: ``D`` of the ``(B, D, L)`` re-projection table.
    """
    if ops is None:
        try:
            ops = importlib.import_module("sstkd.ops")
        except Exception as e:
            return [], [f"sstkd.ops does not import: {type(e).__name__}: {e}"]
    cases, skipped = [], []
    image_shape, qco_shape = tuple(image_shape), tuple(qco_shape)
    pyramid, why = _kornia_pyramid()
    if pyramid is None:
        skipped.append(why)
    else:
        def make_img(d, t, g, s=image_shape):
            return [torch.randn(*s, generator=g).to(device=d, dtype=t)]

        cases.append(PeerCase(
            "lp_dec (1 level) vs kornia build_laplacian_pyramid(x, 2)", "x".join(map(str, image_shape)), make_img,
            lambda xs: ops.lp_dec(xs[0], backend="torch"), lambda xs: pyramid(xs[0], 2), (0,), None,
            f"ours <= {LP_MAX_TIME_RATIO}x kornia's time", lambda tr, mr: tr <= LP_MAX_TIME_RATIO))

    def make_qco(d, t, g, s=qco_shape):
        sv = (0.5 + 0.15 * torch.randn(*s, generator=g)).clamp(-1, 1)
        table = torch.randn(s[0], table_channels, levels, generator=g)
        return [sv.to(device=d, dtype=t), table.to(device=d, dtype=t)]

    def compare_qco(a, b):
        return max(float((x.detach().double() - y.detach().double()).abs().max()) for x, y in zip(a, b))

    cases.append(PeerCase(
        f"quantize_count + reproject (L={levels}, table D={table_channels}) vs dense STLNet QCO",
        f"{'x'.join(map(str, qco_shape))}", make_qco,
        lambda xs: ours_qco(ops, xs[0], levels, xs[1]), lambda xs: stlnet_dense_qco(xs[0], levels, xs[1]),
        (0, 1), compare_qco,
        f">= {QCO_MIN_SPEEDUP}x faster and >= {QCO_MIN_MEM_RATIO}x less peak memory than dense",
        lambda tr, mr: tr > 0 and 1.0 / tr >= QCO_MIN_SPEEDUP and mr >= QCO_MIN_MEM_RATIO))
    return cases, skipped


def _mode_call(fn, mode: str, diff: tuple[int, ...], gen: torch.Generator):
    if mode == "fwd":
        def call(xs):
            with torch.no_grad():
                return fn(xs)

        return call, lambda xs: xs

    def prep(xs):
        return [x.detach().requires_grad_(i in diff) for i, x in enumerate(xs)]

    cots: dict[int, list] = {}

    def call_fb(xs):
        outs = [o for o in tensor_leaves(fn(xs)) if o.requires_grad]
        key = id(xs)
        if key not in cots:  # one fixed cotangent per input copy (made on the warm-up call)
            cots[key] = [torch.randn(o.shape, generator=gen).to(o) for o in outs]
        return torch.autograd.grad(outs, [xs[i] for i in diff], cots[key], allow_unused=True)

    return call_fb, prep


def run_peers(
    cases: Sequence[PeerCase],
    device: torch.device,
    *,
    dtypes: Sequence[torch.dtype] = (torch.float32,),
    modes: Sequence[str] = ("fwd", "fwd+bwd"),
    warmup: int = 2,
    repeat: int = 10,
    copies: int = 2,
    max_seconds: float | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Time ours and the peer in alternation on the same input copies; one row per case × dtype × mode."""
    rows = []
    for case in cases:
        for dtype in dtypes:
            dname = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
                     torch.float64: "fp64"}.get(dtype, str(dtype).replace("torch.", ""))
            gen = torch.Generator(device="cpu").manual_seed(0)
            inputs = [case.make(device, dtype, gen) for _ in range(copies)]
            diff_note = None
            if case.compare is not None:
                with torch.no_grad():
                    diff_note = case.compare(case.ours(inputs[0]), case.peer(inputs[0]))
            for mode in modes:
                row = {"comparison": case.name, "shape": case.shape, "dtype": dname, "mode": mode,
                       "target": case.target, "judged": mode == "fwd", "max_abs_diff": diff_note}
                try:
                    fns = {}
                    for side, fn in (("ours", case.ours), ("peer", case.peer)):
                        call, prep = _mode_call(fn, mode, case.diff, torch.Generator(device="cpu").manual_seed(1))
                        fns[side] = (call, [prep(xs) for xs in inputs])
                    # alternate ours and the peer call by call: load on a shared machine hits both alike
                    stats = time_interleaved(fns, device=device, warmup=warmup, rounds=repeat,
                                             max_seconds=max_seconds)
                    for side, (call, prepared) in fns.items():
                        row[f"{side}_ms"] = stats[side].median_ms
                        row[f"{side}_iqr_ms"] = stats[side].iqr_ms
                        row[f"{side}_min_ms"] = stats[side].min_ms
                        row[f"{side}_peak_bytes"] = measure_peak_memory(lambda: call(prepared[0]), device)
                except Exception as e:  # reported, the run goes on
                    row["status"] = "error"
                    row["reason"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                    rows.append(row)
                    log(f"{case.name} {dname} {mode}: {row['reason']}")
                    continue
                row["status"] = "ok"
                row["time_ratio"] = row["ours_ms"] / row["peer_ms"]  # < 1: ours faster
                row["speedup"] = row["peer_ms"] / row["ours_ms"]
                mem_ok = row["ours_peak_bytes"] and row["peer_peak_bytes"] is not None
                row["mem_ratio"] = row["peer_peak_bytes"] / row["ours_peak_bytes"] if mem_ok else None
                row["meets_target"] = (case.judge(row["time_ratio"], row["mem_ratio"] or 0.0)
                                       if row["judged"] else None)
                rows.append(row)
                log(format_peer_row(row))
    return rows


def format_peer_row(r: dict) -> str:
    if r.get("status") != "ok":
        return f"{r['comparison']} [{r['shape']} {r['dtype']} {r['mode']}]: {r.get('status')}: {r.get('reason')}"
    mib = lambda b: "n/a" if b is None else f"{b / 2**20:.1f} MiB"  # noqa: E731
    verdict = "" if r["meets_target"] is None else ("  target met" if r["meets_target"] else "  TARGET MISSED")
    mem = "n/a" if r["mem_ratio"] is None else f"{r['mem_ratio']:.2f}x"
    return (f"{r['comparison']} [{r['shape']} {r['dtype']} {r['mode']}]: ours {r['ours_ms']:.3f} ms "
            f"(peak {mib(r['ours_peak_bytes'])}), peer {r['peer_ms']:.3f} ms (peak {mib(r['peer_peak_bytes'])}); "
            f"ours/peer time {r['time_ratio']:.2f}, peer/ours memory {mem}{verdict}")
