"""One description per texture op: what ``sstkd verify``, ``sstkd bench``, the roofline / cost
reports and the parametrized tests iterate over.

An :class:`OpSpec` names the public op and its PyTorch reference, makes example inputs of a
given shape, says which inputs are differentiable, counts the compulsory bytes of the forward
and the backward, and lists the shapes each consumer runs. :data:`SPECS` lists every op;
adding an op is a reference, a spec here and (optionally) kernels in a backend table
(``docs/architecture.md``).

Shapes: ``(B, C, H, W)`` images for the pyramid / DFB / contourlet ops (``lp_rec``: the
full-size ``band``; ``dfb_rec`` / ``contourlet_rec``: the image the coefficients come from);
``(B, N)`` or ``(B, H, W)`` intensities for the quantization ops (``reproject``: the
intensities; its table has ``channels`` rows).

Compulsory bytes: every input the pass needs read once and every output written once, each at
its own element size; nothing else (intermediates, re-reads and padding are what a kernel may
lose against this bound):

* forward: inputs + outputs;
* backward: incoming output gradients + the inputs the gradient formula needs (none for the
  linear decompositions, whose backward is their adjoint; ``x`` for the squared energies;
  ``s`` / ``table`` / ``centers`` for the quantization ops) + the input gradients written.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import torch

from sstkd.ops.contourlet import (
    contourlet_band_shapes,
    contourlet_dec,
    contourlet_dec_ref,
    contourlet_energy,
    contourlet_energy_ref,
    contourlet_rec,
    contourlet_rec_ref,
)
from sstkd.ops.dfb import dfb_band_shapes, dfb_dec, dfb_dec_ref, dfb_rec, dfb_rec_ref
from sstkd.ops.laplacian import lp_dec, lp_dec_ref, lp_rec, lp_rec_ref
from sstkd.ops.quantize import cooccurrence, quantize_count, reproject

__all__ = ["LAYOUTS", "MODES", "TOLERANCES", "OpSpec", "Case", "SPECS", "apply_layout", "get_spec", "op_names",
           "shape_bytes"]

LAYOUTS = ("contiguous", "channels_last", "noncontig")
MODES = ("fwd", "bwd", "fwd+bwd")
# Tolerance classes: per dtype, the floor ``rtol · max|truth|`` added to twice the error of the
# reference run in that dtype (DESIGN §6; the truth is the float64 reference).
TOLERANCES: dict[str, dict[torch.dtype, float]] = {
    "float64_reference": {torch.float32: 1e-5, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7,
                          torch.float64: 1e-12},
}

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True, eq=False)  # compared and hashed by identity: one spec per op
class OpSpec:
    """One texture op.

    Attributes:
        name: the op's name (``sstkd.ops.<name>``, the backend tables' key).
        reference: the PyTorch reference, called like ``op`` without ``backend``.
        op: the public op; takes ``backend=``.
        make_inputs: ``(shape, dtype, device, layout="contiguous", seed=0, **params) -> (args, kwargs)``
            so that ``op(*args, **kwargs, backend=b)`` runs; ``params`` are one of ``variants``.
            On the ``"meta"`` device it allocates nothing.
        grad_inputs: indices into ``args`` of the differentiable inputs (a tensor, or a
            (nested) list of tensors).
        fwd_bytes, bwd_bytes: ``(args, kwargs) -> int`` compulsory bytes (module docstring).
        tolerance: a key of :data:`TOLERANCES`.
        size_params: the ``params`` that, with the shape, fix every size (required by
            :func:`shape_bytes`).
        test_shapes, verify_shapes: tiny / interpreter-sized shapes (tests; ``sstkd verify`` on the CPU).
        verify_full_shapes: training-sized shapes (``sstkd verify`` on a GPU or ``--full``).
        bench_shapes, bench_quick_shapes: ``(label, shape)`` of ``sstkd bench`` (full / ``--quick``).
        variants: ``params`` of ``make_inputs``, one case each, for tests and verify.
        bench_variants: the same for the benchmarks.
    """

    name: str
    reference: Callable[..., Any]
    op: Callable[..., Any]
    make_inputs: Callable[..., tuple[tuple, dict]]
    grad_inputs: tuple[int, ...]
    fwd_bytes: Callable[[tuple, dict], int]
    bwd_bytes: Callable[[tuple, dict], int]
    tolerance: str = "float64_reference"
    size_params: tuple[str, ...] = ()
    test_shapes: tuple[Shape, ...] = ()
    verify_shapes: tuple[Shape, ...] = ()
    verify_full_shapes: tuple[Shape, ...] = ()
    bench_shapes: tuple[tuple[str, Shape], ...] = ()
    bench_quick_shapes: tuple[tuple[str, Shape], ...] = ()
    variants: tuple[Mapping[str, Any], ...] = ({},)
    bench_variants: tuple[Mapping[str, Any], ...] = ({},)

    def bytes(self, mode: str, args: tuple, kwargs: dict) -> int:
        """Compulsory bytes of ``mode`` (``"fwd"``, ``"bwd"`` or ``"fwd+bwd"``)."""
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if mode == "fwd+bwd":
            return self.fwd_bytes(args, kwargs) + self.bwd_bytes(args, kwargs)
        return (self.fwd_bytes if mode == "fwd" else self.bwd_bytes)(args, kwargs)

    def run(self, args: tuple, kwargs: dict, backend: str):
        return self.op(*args, **kwargs, backend=backend)

    def cases(self, purpose: str) -> list["Case"]:
        """The ``(shape, params)`` cases of ``purpose``: ``"test"``, ``"verify"``, ``"verify_full"``,
        ``"bench"`` or ``"bench_quick"``."""
        if purpose in ("bench", "bench_quick"):
            shapes = self.bench_shapes if purpose == "bench" else self.bench_quick_shapes
            return [Case(self, label, tuple(s), dict(p)) for label, s in shapes for p in self.bench_variants]
        table = {"test": self.test_shapes, "verify": self.verify_shapes, "verify_full": self.verify_full_shapes}
        if purpose not in table:
            raise ValueError(f"purpose: expected test, verify, verify_full, bench or bench_quick, got {purpose!r}")
        return [Case(self, "x".join(map(str, s)), tuple(s), dict(p)) for s in table[purpose] for p in self.variants]


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """One op at one shape with one set of ``make_inputs`` params."""

    spec: OpSpec
    label: str
    shape: Shape
    params: dict

    @property
    def name(self) -> str:
        """``op`` or ``op[k=v,...]``."""
        if not self.params:
            return self.spec.name
        return f"{self.spec.name}[{','.join(f'{k}={_fmt(v)}' for k, v in self.params.items())}]"

    @property
    def params_str(self) -> str:
        return ", ".join(f"{k}={_fmt(v)}" for k, v in self.params.items())

    def inputs(self, dtype: torch.dtype, device, layout: str = "contiguous", seed: int = 0) -> tuple[tuple, dict]:
        return self.spec.make_inputs(self.shape, dtype, device, layout=layout, seed=seed, **self.params)

    def bytes(self, mode: str, dtype: torch.dtype) -> int:
        """Compulsory bytes at this shape and dtype (meta inputs, nothing allocated)."""
        args, kwargs = self.spec.make_inputs(self.shape, dtype, "meta", **self.params)
        return self.spec.bytes(mode, args, kwargs)


def _fmt(v) -> str:
    return str(list(v)) if isinstance(v, (list, tuple)) else str(v)


# ----------------------------------------------------------------------------- input helpers
def apply_layout(t, layout: str):
    """``t`` (a tensor, or nested lists/tuples of them) with the same values in ``layout``:
    ``"channels_last"`` (4-D tensors), ``"noncontig"`` (transposed storage, >= 2-D) or ``"contiguous"``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if isinstance(t, (list, tuple)):
        return type(t)(apply_layout(u, layout) for u in t)
    if not isinstance(t, torch.Tensor) or layout == "contiguous":
        return t
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "noncontig" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    return t


class _Maker:
    """Random tensors of one case: CPU generator (``seed``), moved to ``device`` / ``dtype``;
    on ``"meta"`` only shapes."""

    def __init__(self, dtype: torch.dtype, device, seed: int):
        self.dtype = dtype
        self.device = torch.device(device)
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.gen_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    @property
    def meta(self) -> bool:
        return self.device.type == "meta"

    def _out(self, t):
        return t.to(device=self.device, dtype=self.dtype)

    def randn(self, *shape):
        if self.meta:
            return torch.empty(*shape, device="meta", dtype=self.dtype)
        return self._out(torch.randn(*shape, generator=self.gen, dtype=self.gen_dtype))

    def rand(self, *shape):
        if self.meta:
            return torch.empty(*shape, device="meta", dtype=self.dtype)
        return self._out(torch.rand(*shape, generator=self.gen, dtype=self.gen_dtype))

    def centers(self, s: torch.Tensor, levels: int):
        """The reference's initial centers of ``s`` (constants, as DTIEM passes them)."""
        if self.meta:
            return torch.empty(s.shape[0], levels, device="meta", dtype=self.dtype)
        with torch.no_grad():
            return quantize_count(s, levels, backend="torch")[0]


def _check_shape(op: str, shape, ranks: tuple[int, ...], what: str) -> Shape:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in ranks:
        raise ValueError(f"shape: {op} takes {what}, got {shape}")
    if any(s <= 0 for s in shape):
        raise ValueError(f"shape: sizes must be positive, got {shape}")
    return shape


def _image(op, shape):
    return _check_shape(op, shape, (4,), "(B, C, H, W)")


def _intensity(op, shape, ranks=(2, 3)):
    return _check_shape(op, shape, ranks, "(B, N) or (B, H, W) intensities" if ranks == (2, 3)
                        else "(B, H, W) intensities")


def default_levels(shape: Sequence[int]) -> int:
    """Quantization levels of a case: 8 for tiny images (< 1024 pixels), else DTIEM's 128."""
    return 8 if math.prod(shape[1:]) < 1024 else 128


def _esize(t: torch.Tensor) -> int:
    return t.element_size()


def _numel(ts) -> int:
    if isinstance(ts, torch.Tensor):
        return ts.numel()
    return sum(_numel(t) for t in ts)


# ----------------------------------------------------------------------------- per-op inputs
def _lp_dec_inputs(shape, dtype, device, layout="contiguous", seed=0):
    m = _Maker(dtype, device, seed)
    return (apply_layout(m.randn(*_image("lp_dec", shape)), layout),), {}


def _lp_rec_inputs(shape, dtype, device, layout="contiguous", seed=0):
    b, c, h, w = _image("lp_rec", shape)
    m = _Maker(dtype, device, seed)
    return apply_layout((m.randn(b, c, h // 2, w // 2), m.randn(b, c, h, w)), layout), {}


def _dfb_dec_inputs(shape, dtype, device, layout="contiguous", seed=0, levels=3):
    m = _Maker(dtype, device, seed)
    return (apply_layout(m.randn(*_image("dfb_dec", shape)), layout),), {"levels": levels}


def _dfb_rec_inputs(shape, dtype, device, layout="contiguous", seed=0, levels=3):
    b, c, h, w = _image("dfb_rec", shape)
    m = _Maker(dtype, device, seed)
    bands = [m.randn(b, c, hk, wk) for hk, wk in dfb_band_shapes(h, w, levels)]
    return (apply_layout(bands, layout),), {}


def _contourlet_dec_inputs(op):
    def make(shape, dtype, device, layout="contiguous", seed=0, nlevs=(3, 3)):
        m = _Maker(dtype, device, seed)
        return (apply_layout(m.randn(*_image(op, shape)), layout),), {"nlevs": list(nlevs)}

    return make


def _contourlet_rec_inputs(shape, dtype, device, layout="contiguous", seed=0, nlevs=(3, 3)):
    b, c, h, w = _image("contourlet_rec", shape)
    m = _Maker(dtype, device, seed)
    (hl, wl), levels = contourlet_band_shapes(h, w, list(nlevs))
    low = m.randn(b, c, hl, wl)
    bands = [[m.randn(b, c, hk, wk) for hk, wk in level] for level in levels]
    return apply_layout((low, bands), layout), {}


def _quantize_count_inputs(shape, dtype, device, layout="contiguous", seed=0, levels=None, iters=0,
                           kernel="triangular", quantiles=None):
    shape = _intensity("quantize_count", shape)
    m = _Maker(dtype, device, seed)
    levels = default_levels(shape) if levels is None else levels
    kwargs = {"levels": levels, "iters": iters, "kernel": kernel}
    if quantiles is not None:  # the robust range (a selection per row) instead of the extremes
        kwargs["quantiles"] = tuple(quantiles)
    return (apply_layout(m.rand(*shape), layout),), kwargs


def _reproject_inputs(shape, dtype, device, layout="contiguous", seed=0, levels=None, channels=4,
                      kernel="triangular"):
    shape = _intensity("reproject", shape)
    m = _Maker(dtype, device, seed)
    levels = default_levels(shape) if levels is None else levels
    s = m.rand(*shape)
    table = m.randn(shape[0], channels, levels)
    return apply_layout((table, s, m.centers(s, levels)), layout), {"kernel": kernel}


def _cooccurrence_inputs(shape, dtype, device, layout="contiguous", seed=0, levels=None, kernel="triangular"):
    shape = _intensity("cooccurrence", shape, ranks=(3,))
    m = _Maker(dtype, device, seed)
    levels = default_levels(shape) if levels is None else levels
    s = m.rand(*shape)
    return apply_layout((s, m.centers(s, levels)), layout), {"kernel": kernel}


# ----------------------------------------------------------------------------- per-op bytes
def _lp_bytes(args, kwargs):
    # x <-> (low, band), in both directions
    x = args[-1]
    n = x.numel()
    return (n + n // 4 + n) * _esize(x)


def _dfb_dec_bytes(args, kwargs):
    return 2 * args[0].numel() * _esize(args[0])  # critically sampled: n in, n out


def _dfb_rec_bytes(args, kwargs):
    bands = args[0]
    return 2 * _numel(bands) * _esize(bands[0])


def _contourlet_dec_bytes(args, kwargs):
    x = args[0]
    b, c, h, w = x.shape
    out, _ = _contourlet_out_elems(h * w, kwargs["nlevs"])
    return (x.numel() + b * c * out) * _esize(x)


def _contourlet_rec_bytes(args, kwargs):
    low, bands = args
    coeffs = low.numel() + _numel(bands)
    return (coeffs + low.numel() * 4 ** len(bands)) * _esize(low)


def _energy_counts(args, kwargs):
    x = args[0]
    b, c, h, w = x.shape
    _, k = _contourlet_out_elems(h * w, kwargs["nlevs"])
    return x.numel(), b * c * k, _esize(x)


def _energy_fwd_bytes(args, kwargs):
    n, e, es = _energy_counts(args, kwargs)
    return (n + e) * es  # read x, write B·C·K


def _energy_bwd_bytes(args, kwargs):
    n, e, es = _energy_counts(args, kwargs)
    return (e + 2 * n) * es  # read grad and x, write grad x


def _contourlet_out_elems(n: int, nlevs: Sequence[int]) -> tuple[int, int]:
    """``(elements of all outputs, number of sub-bands)`` of a contourlet of ``n`` pixels per image.

    Per pyramid level (fine to coarse) of ``m`` pixels: LP + DFB writes the critically sampled
    bandpass (``m``) as ``2**l`` sub-bands; a 0 in ``nlevs`` writes 3 wavelet sub-bands of
    ``m/4``. The final lowpass has ``n / 4**J``.
    """
    total, bands, m = 0, 0, n
    for lev in reversed(list(nlevs)):  # nlevs is coarse -> fine
        if lev > 0:
            total += m
            bands += 2**lev
        else:
            total += 3 * m // 4
            bands += 3
        m //= 4
    return total + m, bands + 1


def _quantize_count_fwd_bytes(args, kwargs):
    s = args[0]
    return (s.numel() + 2 * s.shape[0] * kwargs["levels"]) * _esize(s)  # s -> (centers, hist)


def _quantize_count_bwd_bytes(args, kwargs):
    s = args[0]
    return (s.shape[0] * kwargs["levels"] + 2 * s.numel()) * _esize(s)  # grad hist + s -> grad s


def _reproject_fwd_bytes(args, kwargs):
    table, s, centers = args
    out = table.shape[1] * s.numel()
    return (table.numel() + s.numel() + centers.numel() + out) * _esize(s)


def _reproject_bwd_bytes(args, kwargs):
    # grad out, s, centers, table -> grad table, grad s
    table, s, centers = args
    out = table.shape[1] * s.numel()
    return (out + s.numel() + centers.numel() + 2 * table.numel() + s.numel()) * _esize(s)


def _cooccurrence_fwd_bytes(args, kwargs):
    s, centers = args
    b, levels = centers.shape
    return (s.numel() + b * levels + b * levels * levels) * _esize(s)


def _cooccurrence_bwd_bytes(args, kwargs):
    s, centers = args
    b, levels = centers.shape
    return (b * levels * levels + s.numel() + b * levels + s.numel()) * _esize(s)


# ----------------------------------------------------------------------------- the specs
def _torch_reference(op):
    def reference(*args, **kwargs):
        return op(*args, **kwargs, backend="torch")

    reference.__name__ = reference.__qualname__ = f"{op.__name__}_reference"
    reference.__doc__ = f"``{op.__name__}(..., backend='torch')``: the PyTorch reference."
    return reference


# Shapes of real training (stride-4 features of a ResNet-101 teacher (256 ch) and a ResNet-18
# student (64 ch) on Cityscapes 512x1024 and VOC/ADE20K 512x512 crops, batch 8) and their
# intensity maps; "quick": small shapes for a CPU run of a few minutes.
BENCH_IMAGES = (("teacher-cityscapes", (8, 256, 128, 256)), ("teacher-voc-ade", (8, 256, 128, 128)),
                 ("student-cityscapes", (8, 64, 128, 256)), ("student-voc-ade", (8, 64, 128, 128)))
BENCH_IMAGES_QUICK = (("quick-student", (2, 16, 64, 128)),)
BENCH_MAPS = (("cityscapes", (8, 128, 256)), ("voc-ade", (8, 128, 128)))
BENCH_MAPS_QUICK = (("quick", (2, 64, 128)),)


def _flat_maps(maps):
    return tuple((label, (b, h * w)) for label, (b, h, w) in maps)


_IMG_VERIFY = ((1, 1, 12, 8), (2, 3, 18, 34))
_IMG_VERIFY_FULL = ((2, 3, 66, 130), (8, 256, 128, 256))
_CT_VERIFY = ((1, 2, 24, 24), (2, 1, 24, 40))
_CT_VERIFY_FULL = ((2, 3, 64, 96), (8, 64, 128, 256))
_Q_VERIFY = ((1, 37), (3, 5, 7))
_Q_VERIFY_FULL = ((8, 128 * 256), (4, 127, 131))

_IMAGE_COMMON = dict(verify_shapes=_IMG_VERIFY, verify_full_shapes=_IMG_VERIFY_FULL,
                     bench_shapes=BENCH_IMAGES, bench_quick_shapes=BENCH_IMAGES_QUICK)
_CT_COMMON = dict(verify_shapes=_CT_VERIFY, verify_full_shapes=_CT_VERIFY_FULL, test_shapes=((1, 1, 24, 24),),
                  bench_shapes=BENCH_IMAGES, bench_quick_shapes=BENCH_IMAGES_QUICK)
_Q_COMMON = dict(verify_shapes=_Q_VERIFY, verify_full_shapes=_Q_VERIFY_FULL, test_shapes=((2, 37), (2, 5, 7)),
                 bench_shapes=_flat_maps(BENCH_MAPS), bench_quick_shapes=_flat_maps(BENCH_MAPS_QUICK))

SPECS: list[OpSpec] = [
    OpSpec("lp_dec", lp_dec_ref, lp_dec, _lp_dec_inputs, (0,), _lp_bytes, _lp_bytes,
           test_shapes=((1, 2, 8, 8),), **_IMAGE_COMMON),
    OpSpec("lp_rec", lp_rec_ref, lp_rec, _lp_rec_inputs, (0, 1), _lp_bytes, _lp_bytes,
           test_shapes=((1, 2, 8, 8),), **_IMAGE_COMMON),
    OpSpec("dfb_dec", dfb_dec_ref, dfb_dec, _dfb_dec_inputs, (0,), _dfb_dec_bytes, _dfb_dec_bytes,
           size_params=("levels",), variants=({"levels": 3},), bench_variants=({"levels": 3},),
           **dict(_CT_COMMON, test_shapes=((1, 1, 16, 16),))),
    OpSpec("dfb_rec", dfb_rec_ref, dfb_rec, _dfb_rec_inputs, (0,), _dfb_rec_bytes, _dfb_rec_bytes,
           size_params=("levels",), variants=({"levels": 3},), bench_variants=({"levels": 3},),
           **dict(_CT_COMMON, test_shapes=((1, 1, 16, 16),))),
    OpSpec("contourlet_dec", contourlet_dec_ref, contourlet_dec, _contourlet_dec_inputs("contourlet_dec"), (0,),
           _contourlet_dec_bytes, _contourlet_dec_bytes, size_params=("nlevs",),
           variants=({"nlevs": [2, 2]},), bench_variants=({"nlevs": [3, 3]},), **_CT_COMMON),
    OpSpec("contourlet_rec", contourlet_rec_ref, contourlet_rec, _contourlet_rec_inputs, (0, 1),
           _contourlet_rec_bytes, _contourlet_rec_bytes, size_params=("nlevs",),
           variants=({"nlevs": [2, 2]},), bench_variants=({"nlevs": [3, 3]},), **_CT_COMMON),
    OpSpec("contourlet_energy", contourlet_energy_ref, contourlet_energy, _contourlet_dec_inputs("contourlet_energy"),
           (0,), _energy_fwd_bytes, _energy_bwd_bytes, size_params=("nlevs",),
           variants=({"nlevs": [2, 2]},), bench_variants=({"nlevs": [3, 3]},), **_CT_COMMON),
    OpSpec("quantize_count", _torch_reference(quantize_count), quantize_count, _quantize_count_inputs, (0,),
           _quantize_count_fwd_bytes, _quantize_count_bwd_bytes, size_params=("levels",),
           variants=tuple({"kernel": k, "iters": it} for k in ("triangular", "stlnet") for it in (0, 3)),
           bench_variants=({"iters": 0}, {"iters": 3}), **_Q_COMMON),
    OpSpec("reproject", _torch_reference(reproject), reproject, _reproject_inputs, (0, 1),
           _reproject_fwd_bytes, _reproject_bwd_bytes, size_params=("levels", "channels"),
           bench_variants=({"channels": 1}, {"channels": 64}), **_Q_COMMON),
    OpSpec("cooccurrence", _torch_reference(cooccurrence), cooccurrence, _cooccurrence_inputs, (0,),
           _cooccurrence_fwd_bytes, _cooccurrence_bwd_bytes, size_params=("levels",),
           **dict(_Q_COMMON, verify_shapes=((3, 5, 7),), verify_full_shapes=((4, 127, 131),),
                  test_shapes=((2, 5, 7),), bench_shapes=BENCH_MAPS, bench_quick_shapes=BENCH_MAPS_QUICK)),
]


def op_names(specs: Sequence[OpSpec] | None = None) -> tuple[str, ...]:
    return tuple(s.name for s in (SPECS if specs is None else specs))


def get_spec(name: str, specs: Sequence[OpSpec] | None = None) -> OpSpec:
    """The spec of op ``name``; ValueError naming it (and the known ops) otherwise."""
    for s in SPECS if specs is None else specs:
        if s.name == name:
            return s
    raise ValueError(f"op: unknown op {name!r}; choose from {op_names(specs)}")


def shape_bytes(name: str, mode: str, shape: Sequence[int], dtype: torch.dtype = torch.float32, **params) -> int:
    """Compulsory bytes of op ``name`` in ``mode`` at ``shape`` / ``dtype`` without allocating.

    ``params`` must hold the spec's ``size_params`` (e.g. ``nlevs``, ``levels``, ``channels``).

    Raises:
        ValueError: unknown op or mode, a shape of the wrong rank, a missing parameter (the
            message names it).
    """
    spec = get_spec(name)
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    for p in spec.size_params:
        if p not in params:
            raise ValueError(f"{p}: required for op {name!r}")
    args, kwargs = spec.make_inputs(tuple(shape), dtype, "meta", **params)
    return spec.bytes(mode, args, kwargs)
