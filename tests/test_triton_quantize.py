"""Triton quantize_count / reproject / cooccurrence against the reference ops.

Without a GPU the kernels run in Triton's interpreter (conftest sets
TRITON_INTERPRET=1), so shapes are small and blocks large; every kernel is
also compiled ahead of time for sm_80 and sm_90 at its GPU launch parameters.
Tolerances: DESIGN §6 (tests/triton_utils.py).
"""
import pytest
import torch

pytest.importorskip("triton")

import sstkd.kernels.quantize as K  # noqa: E402
import sstkd.ops.dispatch as dispatch  # noqa: E402
from sstkd.ops import algorithms  # noqa: E402
from sstkd.ops.quantize import cooccurrence, quantize_count, reproject  # noqa: E402
from triton_utils import aot_compile_many, assert_close_to_reference, prefetch  # noqa: E402

OPS = ("quantize_count", "reproject", "cooccurrence")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KERNELS = ["triangular", "stlnet"]


def check(actual, exact, low_ref, name):
    """DESIGN §6 oracle; ``low_ref`` is the reference run in ``actual``'s dtype."""
    if low_ref is not None:
        assert actual.dtype == low_ref.dtype, name
    low_ref = low_ref if actual.dtype in (torch.float16, torch.bfloat16) else None
    assert_close_to_reference(actual, exact.to(torch.float64), low_ref, name=name)


def rand_s(*shape, dtype=torch.float32):
    return (torch.rand(*shape, dtype=torch.float64) * 2 - 1).to(dtype)


# ----------------------------------------------------------------------------
# quantize_count
# ----------------------------------------------------------------------------
QC_CASES = [(1, 1, 4, 1), (1, 37, 5, 3), (3, 300, 16, 1), (2, 129, 2, 0)]  # (B, N, L, iters)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_count_forward_and_grad(dtype, kernel):
    for B, N, L, iters in QC_CASES:
        s = rand_s(B, N, dtype=dtype)
        sg = s.clone().requires_grad_()
        c, h = quantize_count(sg, L, iters=iters, kernel=kernel, backend="triton")
        s64 = s.double().requires_grad_()
        ce, he = quantize_count(s64, L, iters=iters, kernel=kernel, backend="torch")
        sr = s.clone().requires_grad_()
        cr, hr = quantize_count(sr, L, iters=iters, kernel=kernel, backend="torch")
        tag = f"{kernel} {dtype} B={B} N={N} L={L} iters={iters}"
        check(c, ce, cr, f"centers {tag}")
        check(h, he, hr, f"hist {tag}")
        # gradients: with the (float32) centers the kernels used, since the slopes 1/gap
        # amplify center rounding
        w = torch.randn(B, L, dtype=torch.float64)
        (g,) = torch.autograd.grad((h.double() * w).sum(), sg)
        c32 = algorithms.quantize_count(s, L, iters, kernel, None, None,
                                        dispatch.passes("quantize_count", "triton", s))[0]
        (ge,) = torch.autograd.grad((hist_with(s64, c32.double(), kernel) * w).sum(), s64)
        (gr,) = torch.autograd.grad((hist_with(sr, c32, kernel).double() * w).sum(), sr)
        if N > 1:
            assert ge.abs().max() > 0, tag
        check(g, ge, gr, f"grad s {tag}")


def hist_with(s, centers, kernel):
    return quantize_count(s, centers.shape[1], kernel=kernel, centers=centers, backend="torch")[1]


@pytest.mark.parametrize("kernel", KERNELS)
def test_quantize_count_given_centers_quantiles_many_levels(kernel):
    s = rand_s(2, 20, 50)  # (B, H, W); enough pixels that no two of the 130 levels collapse onto one
    given = torch.sort(torch.rand(2, 6, dtype=torch.float64) * 2.4 - 1.2, dim=1).values
    for kw, L in ((dict(centers=given.float()), 6), (dict(quantiles=(0.1, 0.9), iters=2), 9), (dict(iters=1), 130)):
        sg = s.clone().requires_grad_()
        c, h = quantize_count(sg, L, kernel=kernel, backend="triton", **kw)
        s64 = s.double().requires_grad_()
        kw64 = {k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()}
        ce, he = quantize_count(s64, L, kernel=kernel, backend="torch", **kw64)
        check(c, ce, None, f"centers {kw.keys()}")
        check(h, he, None, f"hist {kw.keys()} L={L}")
        w = torch.randn(2, L, dtype=torch.float64)
        he = hist_with(s64, c.double(), kernel)  # the float32 centers the kernels used
        check(torch.autograd.grad((h.double() * w).sum(), sg)[0],
              torch.autograd.grad((he * w).sum(), s64)[0], None, f"grad {kw.keys()} L={L}")


@pytest.mark.parametrize("quantiles", [None, (0.05, 0.95)])
def test_fused_centers_match_the_composed_lloyd_loop(monkeypatch, quantiles):
    """The fused ``start_centers`` pass (init + update kernels) against the composed loop it
    replaces (min/max or sort, ``level_sums`` passes, torch updates), which runs beyond
    ``MAX_FUSED_LEVELS``."""
    s = rand_s(3, 200)
    fused = quantize_count(s, 9, iters=3, quantiles=quantiles, backend="triton")
    monkeypatch.setattr(K, "MAX_FUSED_LEVELS", 8)
    composed = quantize_count(s, 9, iters=3, quantiles=quantiles, backend="triton")
    for a, b in zip(fused, composed):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------
# reproject
# ----------------------------------------------------------------------------
RP_CASES = [(1, 1, 1, 2), (2, 37, 3, 5), (3, 150, 17, 16)]  # (B, N, D, L)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_reproject_forward_and_grads(dtype, kernel):
    for B, N, D, L in RP_CASES:
        s = rand_s(B, N, dtype=dtype)
        centers, _ = quantize_count(s.double(), L, iters=1, kernel=kernel, backend="torch")
        table = torch.randn(B, D, L, dtype=torch.float64).to(dtype)
        outs, grads = [], []
        for t, x, be in ((table, s, "triton"), (table.double(), s.double(), "torch"), (table, s, "torch")):
            t = t.clone().requires_grad_()
            x = x.clone().requires_grad_()
            out = reproject(t, x, centers, kernel=kernel, backend=be)
            w = torch.randn(B, D, N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
            outs.append(out)
            grads.append(torch.autograd.grad((out.double() * w).sum(), (t, x)))
        tag = f"{kernel} {dtype} B={B} N={N} D={D} L={L}"
        check(outs[0], outs[1], outs[2], f"out {tag}")
        check(grads[0][0], grads[1][0], grads[2][0], f"grad table {tag}")
        check(grads[0][1], grads[1][1], grads[2][1], f"grad s {tag}")


def test_reproject_image_shape_mixed_dtypes_expanded_grad_many_levels():
    s = rand_s(2, 5, 7)  # (B, H, W), float32
    L, D = 130, 20  # several level tiles in the grad-table kernel
    centers, _ = quantize_count(s, L, backend="torch")
    table = torch.randn(2, D, L).half().requires_grad_()
    sg = s.clone().requires_grad_()
    out = reproject(table, sg, centers, backend="triton")
    assert out.shape == (2, D, 5, 7) and out.dtype == torch.float16
    out.float().sum().backward()  # expanded (stride-0) output gradient
    t64 = table.detach().double().requires_grad_()
    s64 = s.double().requires_grad_()
    ref = reproject(t64, s64, centers.double(), backend="torch")
    ref.sum().backward()
    low = reproject(table.detach(), s, centers, backend="torch")
    check(out, ref, low, "out")
    assert_close_to_reference(sg.grad, s64.grad, name="grad s")
    tl_ = table.detach().clone().requires_grad_()
    reproject(tl_, s, centers, backend="torch").float().sum().backward()
    check(table.grad, t64.grad, tl_.grad, "grad table")


# ----------------------------------------------------------------------------
# cooccurrence
# ----------------------------------------------------------------------------
CO_CASES = [(1, 1, 2, 2, ((0, 1),)), (2, 7, 9, 5, ((0, 1), (1, 0))), (1, 12, 10, 20, ((2, -3), (0, 0), (-1, 1)))]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cooccurrence_forward_and_grad(dtype, kernel):
    for B, H, W, L, offsets in CO_CASES:
        s = rand_s(B, H, W, dtype=dtype)
        centers, _ = quantize_count(s.double(), L, iters=1, kernel=kernel, backend="torch")
        res = []
        for x, be in ((s, "triton"), (s.double(), "torch"), (s, "torch")):
            x = x.clone().requires_grad_()
            M = cooccurrence(x, centers, offsets=offsets, kernel=kernel, backend=be)
            w = torch.randn(B, L, L, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
            res.append((M, torch.autograd.grad((M.double() * w).sum(), x)[0]))
        tag = f"{kernel} {dtype} {B}x{H}x{W} L={L} {offsets}"
        check(res[0][0], res[1][0], res[2][0], f"M {tag}")
        torch.testing.assert_close(res[0][0].double().sum((1, 2)), torch.ones(B, dtype=torch.float64),
                                   atol=1e-2, rtol=0)
        check(res[0][1], res[1][1], res[2][1], f"grad s {tag}")


@pytest.mark.parametrize("det", [False, True])
def test_cooccurrence_many_levels(det, request):
    if det:
        request.getfixturevalue("deterministic")
    s = rand_s(1, 5, 6)
    L = 40  # 1600 level pairs: two pair tiles of the deterministic kernel
    centers, _ = quantize_count(s, L, backend="torch")
    x = s.clone().requires_grad_()
    M = cooccurrence(x, centers, offsets=((1, 1), (0, -2)), backend="triton")
    x64 = s.double().requires_grad_()
    Me = cooccurrence(x64, centers.double(), offsets=((1, 1), (0, -2)), backend="torch")
    check(M, Me, None, "M")
    w = torch.randn(1, L, L)
    check(torch.autograd.grad((M * w).sum(), x)[0], torch.autograd.grad((Me * w.double()).sum(), x64)[0],
          None, "grad s")


# ----------------------------------------------------------------------------
# deterministic mode, dtype limits
# ----------------------------------------------------------------------------
class _Spy:
    def __init__(self, kernel):
        self.kernel, self.launches, self.calls = kernel, 0, []

    def __getitem__(self, grid):
        self.launches += 1
        launch = self.kernel[grid]

        def call(*args, **kwargs):
            self.calls.append(kwargs)
            return launch(*args, **kwargs)

        return call


@pytest.fixture
def deterministic():
    old, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(old, warn_only=warn)


def _all_ops(s, table, kernel, backend="triton"):
    sg = s.clone().requires_grad_()
    tg = table.clone().requires_grad_()
    c, h = quantize_count(sg, 8, iters=2, kernel=kernel, backend=backend)
    out = reproject(tg, sg, c, kernel=kernel, backend=backend)
    M = cooccurrence(sg.view(2, 6, 7), c, kernel=kernel, backend=backend)
    loss = (h * torch.arange(8.0)).sum() + (out * out).sum() + (M * M).sum()
    gs, gt = torch.autograd.grad(loss, (sg, tg))
    return c, h, out, M, gs, gt


def _small_chunks(monkeypatch):
    """Several programs per image (the interpreter's default is one), so that the
    merging of per-program results is exercised."""
    orig = K.launch_config

    def small(batch, n, levels, interpreted=None):
        cfg = orig(batch, n, levels, interpreted)
        return cfg._replace(BLOCK_N=16, CHUNK=16, P=-(-n // 16))

    monkeypatch.setattr(K, "launch_config", small)


@pytest.mark.parametrize("kernel", KERNELS)
def test_deterministic_mode_uses_partials_and_matches(monkeypatch, deterministic, kernel):
    spies = {name: _Spy(getattr(K, name)) for name in
             ("_sum_partials_kernel", "_count_kernel", "_cooc_partial_kernel", "_cooc_atomic_kernel")}
    for name, spy in spies.items():
        monkeypatch.setattr(K, name, spy)
    _small_chunks(monkeypatch)
    s = rand_s(2, 42)
    table = torch.randn(2, 3, 8)
    first = _all_ops(s, table, kernel)
    # partials, summed in a fixed order: 2 Lloyd passes + the final count (by the Lloyd and
    # normalization kernels), the grad table (_sum_partials_kernel), the co-occurrence
    assert [c["DETERMINISTIC"] for c in spies["_count_kernel"].calls] == [True] * 3
    assert spies["_sum_partials_kernel"].launches == 1
    assert (spies["_cooc_partial_kernel"].launches, spies["_cooc_atomic_kernel"].launches) == (1, 0)
    second = _all_ops(s, table, kernel)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    torch.use_deterministic_algorithms(False)
    for spy in spies.values():
        spy.launches, spy.calls = 0, []
    atomic = _all_ops(s, table, kernel)
    # atomics: the Lloyd passes, grad table and co-occurrence (the final count keeps its partials)
    assert [c["DETERMINISTIC"] for c in spies["_count_kernel"].calls] == [False, False, True]
    assert spies["_sum_partials_kernel"].launches == 0
    assert (spies["_cooc_partial_kernel"].launches, spies["_cooc_atomic_kernel"].launches) == (0, 1)
    monkeypatch.undo()  # default launch parameters, reference ops
    ref = _all_ops(s, table, kernel, backend="torch")
    for a, b, r in zip(first, atomic, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)  # 2 Lloyd steps summed in another order


def test_float64_is_refused_or_falls_back():
    s = torch.rand(2, 10, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float64"):
        quantize_count(s, 4, backend="triton")
    c, h = quantize_count(s, 4, backend="auto")  # CPU tensors: the reference
    assert h.dtype == torch.float64
    with pytest.raises(TypeError, match="^s"):
        K.level_sums_triton(s, c.float(), "triangular")
    with pytest.raises(TypeError, match="^s"):
        K.minmax_triton(s)
    with pytest.raises(TypeError, match="^table"):
        K.reproject_triton(torch.rand(2, 1, 4, dtype=torch.float64), s.float(), c.float(), "triangular")


# ----------------------------------------------------------------------------
# launch parameters and ahead-of-time compilation (no GPU needed)
# ----------------------------------------------------------------------------
def test_gpu_launch_config_shapes():
    for B, N, L, D in ((1, 1, 2, 1), (8, 128 * 128, 128, 256), (4, 333, 1000, 3), (2, 10**6, 64, 64)):
        cfg = K.launch_config(B, N, L, interpreted=False)
        assert cfg.CHUNK % cfg.BLOCK_N == 0 and cfg.P * cfg.CHUNK >= N > (cfg.P - 1) * cfg.CHUNK
        assert 2 ** cfg.LOG_L > L and cfg.BLOCK_L >= 16 and cfg.BLOCK_N * cfg.BLOCK_L <= 8192
        gt, block_d = K.grad_table_config(cfg, D, N, interpreted=False)
        co, block_m = K.cooc_config(cfg, N, L, interpreted=False)
        for c2 in (gt, co):
            assert c2.CHUNK % c2.BLOCK_N == 0 and c2.P * c2.CHUNK >= N > (c2.P - 1) * c2.CHUNK
        # register tiles: the grad-table product and the co-occurrence one-hot tile
        assert block_d * gt.BLOCK_N * gt.BLOCK_L <= 2048 and block_m * co.BLOCK_N <= 2048


def _aot_jobs(arch, kernel, det, dt):
    """Every kernel at its GPU launch parameters for (B, N, L, D) = (8, 128², 128, 64)."""
    B, N, L, D = 8, 128 * 128, 128, 64
    cfg = K.launch_config(B, N, L, interpreted=False)
    gt, bd = K.grad_table_config(cfg, D, N, interpreted=False)
    co, bm = K.cooc_config(cfg, N, L, interpreted=False)
    f32, i32 = "*fp32", "i32"
    pix = dict(LOG_L=cfg.LOG_L, KERNEL=kernel)
    nb = K._pixel_block(N, interpreted=False)
    return [
        (K._minmax_kernel, dict(S=dt, PMIN=f32, PMAX=f32, N=i32, P=i32, CHUNK=i32),
         dict(BLOCK_N=min(1024, cfg.CHUNK))),
        (K._count_kernel, dict(S=dt, CEN=f32, MASS=f32, MOMENT=f32, N=i32, L=i32, P=i32, CHUNK=i32),
         dict(pix, WITH_MOMENT=True, DETERMINISTIC=det, BLOCK_N=cfg.BLOCK_N, BLOCK_L=cfg.BLOCK_L)),
        (K._sum_partials_kernel, dict(PART=f32, OUT=f32, P=i32, M=i32), dict(BLOCK=128)),
        (K._count_backward_kernel, dict(S=dt, CEN=f32, G=dt, HIST=f32, TOTAL=f32, GS=dt, N=i32, L=i32, G_SB=i32,
                                        G_SM=i32), dict(pix, BLOCK_N=nb, BLOCK_L=K._row_block(L))),
        (K._reproject_kernel, dict(T=dt, S=dt, CEN=f32, OUT=dt, N=i32, D=i32, L=i32),
         dict(pix, BLOCK_N=nb, BLOCK_D=K._channel_block(D))),
        (K._reproject_grad_s_kernel, dict(T=dt, S=dt, CEN=f32, G=dt, GS=dt, N=i32, D=i32, L=i32, sgb=i32, sgd=i32,
                                          sgn=i32), dict(pix, BLOCK_N=nb, BLOCK_D=K._channel_block(D))),
        (K._reproject_grad_table_kernel, dict(S=dt, CEN=f32, G=dt, GT=f32, N=i32, D=i32, L=i32, P=i32, sgb=i32,
                                              sgd=i32, sgn=i32, CHUNK=i32),
         dict(pix, DETERMINISTIC=det, BLOCK_N=gt.BLOCK_N, BLOCK_D=bd, BLOCK_L=gt.BLOCK_L,
              ONE_L_TILE=L <= gt.BLOCK_L)),
        (K._cooc_atomic_kernel, dict(S=dt, CEN=f32, OFF="*i32", CNT=f32, H=i32, W=i32, L=i32, NUM_OFF=i32),
         dict(pix, BLOCK_N=nb)),
        (K._cooc_partial_kernel, dict(S=dt, CEN=f32, OFF="*i32", PART=f32, H=i32, W=i32, L=i32, P=i32, NUM_OFF=i32,
                                      CHUNK=i32), dict(pix, BLOCK_N=co.BLOCK_N, BLOCK_M=bm)),
        (K._cooc_backward_kernel, dict(S=dt, CEN=f32, OFF="*i32", GC=f32, GS=dt, H=i32, W=i32, L=i32, NUM_OFF=i32),
         dict(pix, BLOCK_N=nb)),
        # the (B, L) bookkeeping: one program per image
        (K._init_centers_kernel, dict(A=dt if det else f32, A2=dt if det else f32, CEN=f32, ZM=f32, ZS=f32, P=i32,
                                      L=i32, I0=i32, I1=i32, F0="fp32", J0=i32, J1=i32, F1="fp32"),
         dict(FROM_SORTED=det, ZERO=not det, BLOCK=K._row_block(max(L, cfg.P)))),
        (K._lloyd_kernel, dict(MASS=f32, MOMENT=f32, CEN=f32, OUT=f32, P=i32, L=i32),
         dict(ZERO=not det, BLOCK_L=L)),
        (K._normalize_kernel, dict(PART=f32, HIST=f32, OUT=dt, TOTAL=f32, P=i32, M=i32),
         dict(WITH_OUT=dt != f32, BLOCK=K._row_block(L * L))),
        (K._normalize_backward_kernel, dict(G=dt, HIST=f32, TOTAL=f32, GC=f32, M=i32, G_SB=i32, G_SM=i32),
         dict(BLOCK=K._row_block(L * L))),
    ]


def _all_aot_jobs():
    # both encodings, both merge modes and all three dtypes are covered across the two archs
    jobs = [(*j, 80) for j in _aot_jobs(80, 0, False, "*fp16")]
    jobs += [(*j, 90) for j in _aot_jobs(90, 1, True, "*bf16")]
    jobs += [(*j, 90) for j in _aot_jobs(90, 0, False, "*fp32")[1:2]]
    return jobs


prefetch("aot", _all_aot_jobs())  # compiled in the session's compile process while other tests run


def test_aot_compile_every_kernel_sm80_sm90():
    jobs = _all_aot_jobs()
    results = aot_compile_many(jobs)
    assert len(results) == len(jobs)
    for r, job in zip(results, jobs):
        assert r.arch == job[3] and r.name == job[0].fn.__name__
        assert "cubin" in r.asm and len(r.asm["cubin"]) > 0
        assert ".target sm_%d" % r.arch in r.asm["ptx"]
        assert r.shared <= 160 * 1024  # fits an SM's shared memory
