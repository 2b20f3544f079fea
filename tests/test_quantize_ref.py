"""Reference quantize_count / reproject / cooccurrence against literal dense implementations.

The dense versions below build the full pixels × levels encoding ``E`` (what
STLNet's public code does); the library never does. float64 throughout unless
a test is about dtypes.
"""
import numpy as np
import pytest
import torch

from sstkd.debug import debug_checks
from sstkd.ops.quantize import QuantizeCount, cooccurrence, quantize_count, reproject

F64 = torch.float64


# ----------------------------------------------------------------------------
# literal dense implementations (pixels × levels)
# ----------------------------------------------------------------------------
def dense_triangular(s, c):
    """E_in = max(0, 1 − |s_i − c_n| / w_n), w_n the spacing on the side of s; outermost clamp."""
    B, L = c.shape
    sc = s[:, :, None]
    cn = c[:, None, :]
    big = torch.ones_like(c[:, :1])
    right = torch.cat([c[:, 1:] - c[:, :-1], big], 1)[:, None, :]
    left = torch.cat([big, c[:, 1:] - c[:, :-1]], 1)[:, None, :]
    w = torch.where(sc >= cn, right, left)
    E = torch.relu(1 - (sc - cn).abs() / w)
    n = torch.arange(L)
    below = (sc <= c[:, None, :1]) & (n == 0)
    above = (sc >= c[:, None, -1:]) & (n == L - 1)
    return torch.where(below | above, torch.ones_like(E), E)


def dense_stlnet_exact(s, smin, smax, L):
    """STLNet's QCO: uniform centers, E = (1 − |c − s|)·[|c − s| < Δ], Δ = (smax − smin)/L."""
    n = torch.arange(L, dtype=s.dtype)
    delta = ((smax - smin) / L)[:, None, None]
    c = smin[:, None] + (2 * n + 1) / (2 * L) * (smax - smin)[:, None]
    d = (c[:, None, :] - s[:, :, None]).abs()
    return (1 - d) * (d < delta).to(s.dtype)


def dense_stlnet_taps(s, c):
    """stlnet encoding on the bracketing pair only (the library's rule for non-uniform centers)."""
    B, L = c.shape
    delta = ((c[:, -1] - c[:, 0]) / (L - 1))[:, None, None]
    lo = ((c[:, None, :] < s[:, :, None].detach()).sum(-1) - 1).clamp(0, L - 2)
    n = torch.arange(L)
    tap = (n == lo[..., None]) | (n == lo[..., None] + 1)
    d = (c[:, None, :] - s[:, :, None]).abs()
    return (1 - d) * ((d < delta) & tap).to(s.dtype)


def dense_E(s, c, kernel):
    return dense_triangular(s, c) if kernel == "triangular" else dense_stlnet_taps(s, c)


def dense_centers(s, L, iters, kernel, quantiles=None):
    with torch.no_grad():
        if quantiles is None:
            smin, smax = s.amin(1), s.amax(1)
        else:
            q = torch.quantile(s, torch.tensor(quantiles, dtype=s.dtype), dim=1)
            smin, smax = q[0], q[1]
        n = torch.arange(L, dtype=s.dtype)
        c = smin[:, None] + (n + 0.5) * ((smax - smin) / L)[:, None]
        for _ in range(iters):
            E = dense_E(s, c, kernel)
            mass = E.sum(1)
            c = torch.where(mass > 0, (E * s[:, :, None]).sum(1) / mass.clamp_min(1e-300), c)
            c = c.sort(1).values
    return c


def dense_hist(s, c, kernel):
    counts = dense_E(s, c, kernel).sum(1)
    return counts / counts.sum(1, keepdim=True)


# ----------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------
def camera_cosine(size=48):
    """A DTIEM-like intensity map: cosine similarity of per-pixel features to their mean."""
    from skimage.data import camera

    img = torch.from_numpy(camera().astype(np.float64) / 255.0)[None, None]
    img = torch.nn.functional.interpolate(img, size=(size, size), mode="area")[0, 0]
    gy, gx = torch.gradient(img)
    feats = torch.stack([img, gx * 4, gy * 4, img.square(), torch.ones_like(img) * 0.2])
    g = feats.mean((1, 2), keepdim=True)
    cos = (feats * g).sum(0) / (feats.norm(dim=0) * g.norm(dim=0)).clamp_min(1e-12)
    return torch.stack([cos, (img - img.min()) / (img.max() - img.min())])  # (2, H, W)


def random_s(B=3, N=700):
    x = torch.rand(B, N, dtype=F64) * 2 - 1
    x[1] = x[1] ** 3  # skewed image
    return x


INPUTS = {
    "random": lambda: random_s(),
    "camera": lambda: camera_cosine().reshape(2, -1),
}


# ----------------------------------------------------------------------------
# quantize_count
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("source", list(INPUTS))
@pytest.mark.parametrize("kernel", ["triangular", "stlnet"])
@pytest.mark.parametrize("iters", [0, 1, 3])
@pytest.mark.parametrize("levels", [2, 7, 32])
def test_quantize_count_matches_dense(source, kernel, iters, levels):
    s = INPUTS[source]().requires_grad_()
    c, h = quantize_count(s, levels, iters=iters, kernel=kernel, backend="torch")
    c_ref = dense_centers(s.detach(), levels, iters, kernel)
    torch.testing.assert_close(c, c_ref, rtol=1e-12, atol=1e-12)
    sd = s.detach().clone().requires_grad_()
    h_ref = dense_hist(sd, c_ref, kernel)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h.sum(1), torch.ones(s.shape[0], dtype=F64))
    assert not c.requires_grad
    w = torch.randn_like(h)
    (g,) = torch.autograd.grad((h * w).sum(), s)
    (g_ref,) = torch.autograd.grad((h_ref * w).sum(), sd)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    assert g.abs().sum() > 0


@pytest.mark.parametrize("levels", [4, 16, 128])
def test_stlnet_is_stlnet_exactly(levels):
    """With the initial (uniform) centers, "stlnet" equals STLNet's dense QCO count."""
    s = camera_cosine(64).reshape(2, -1).requires_grad_()
    _, h = quantize_count(s, levels, kernel="stlnet")
    sd = s.detach().clone().requires_grad_()
    E = dense_stlnet_exact(sd, sd.detach().amin(1), sd.detach().amax(1), levels)
    h_ref = E.sum(1) / E.sum((1, 2))[:, None]
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(h)
    torch.testing.assert_close(torch.autograd.grad((h * w).sum(), s)[0],
                               torch.autograd.grad((h_ref * w).sum(), sd)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel", ["triangular", "stlnet"])
def test_quantiles_and_given_centers(kernel):
    s = random_s().requires_grad_()
    q = (0.05, 0.9)
    c, h = quantize_count(s, 9, iters=2, kernel=kernel, quantiles=q)
    c_ref = dense_centers(s.detach(), 9, 2, kernel, quantiles=q)
    torch.testing.assert_close(c, c_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, dense_hist(s.detach(), c_ref, kernel), rtol=1e-12, atol=1e-12)
    # given (non-uniform, partly outside the data) centers are used as is
    given = torch.sort(torch.rand(3, 6, dtype=F64) * 2.4 - 1.2, dim=1).values
    c2, h2 = quantize_count(s, 6, kernel=kernel, centers=given)
    torch.testing.assert_close(c2, given)
    sd = s.detach().clone().requires_grad_()
    h_ref = dense_hist(sd, given, kernel)
    torch.testing.assert_close(h2, h_ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(h2)
    torch.testing.assert_close(torch.autograd.grad((h2 * w).sum(), s)[0],
                               torch.autograd.grad((h_ref * w).sum(), sd)[0], rtol=1e-10, atol=1e-12)
    # a teacher's refined centers reproduce its own histogram
    ct, ht = quantize_count(s, 9, iters=2, kernel=kernel)
    torch.testing.assert_close(quantize_count(s, 9, kernel=kernel, centers=ct)[1], ht, rtol=1e-12, atol=1e-12)


def test_quantiles_make_robust_range():
    s = torch.rand(1, 1000, dtype=F64)
    s[0, :3] = 50.0  # outliers
    c_raw, h_raw = quantize_count(s, 16)
    c_rob, h_rob = quantize_count(s, 16, quantiles=(0.01, 0.99))
    assert (h_raw > 0).sum() == 2  # everything in the first bin, outliers in the last
    assert (h_rob > 0).sum() == 16
    assert c_rob[0, -1] < 1.0


def _weighted_sq_error(s, centers, weights_from):
    """Q(centers; E) = Σ_i Σ_n E_in (s_i − c_n)², with E the (triangular/stlnet) encoding of ``weights_from``."""
    return lambda kernel: (dense_E(s, weights_from, kernel) * (s[:, :, None] - centers[:, None, :]) ** 2).sum((1, 2))


@pytest.mark.parametrize("kernel", ["triangular", "stlnet"])
@pytest.mark.parametrize("source", list(INPUTS))
def test_lloyd_steps_never_increase_weighted_error(kernel, source):
    """Each Lloyd step minimizes Q(c; E(c_k)) = Σ_i Σ_n E_in(c_k) (s_i − c_n)² over c, so
    Q(c_{k+1}; E(c_k)) <= Q(c_k; E(c_k)). (Neither the re-encoded soft error nor the
    hard-assignment error is monotone for soft encodings; this is the guarantee.)"""
    s = INPUTS[source]()
    for L in (3, 16):
        prev = quantize_count(s, L, iters=0, kernel=kernel)[0]
        for k in range(1, 5):
            nxt = quantize_count(s, L, iters=k, kernel=kernel)[0]
            before = _weighted_sq_error(s, prev, prev)(kernel)
            after = _weighted_sq_error(s, nxt, prev)(kernel)
            assert (after <= before * (1 + 1e-12)).all(), (L, k, before, after)
            assert (after < before).any()  # it does move
            assert (nxt[:, 1:] >= nxt[:, :-1]).all()
            prev = nxt


def test_lloyd_empty_bins_keep_centers():
    s = torch.cat([torch.zeros(1, 50), torch.ones(1, 50)], 1).double()  # two spikes, 8 levels
    c0, _ = quantize_count(s, 8)
    c1, h1 = quantize_count(s, 8, iters=1)
    torch.testing.assert_close(c1[0, 1:-1], c0[0, 1:-1])  # interior levels saw no pixel
    torch.testing.assert_close(h1[0, [0, -1]], torch.tensor([0.5, 0.5], dtype=F64))


@pytest.mark.parametrize("kernel", ["triangular", "stlnet"])
@pytest.mark.parametrize("iters", [0, 2])
def test_constant_image(kernel, iters):
    s = torch.full((2, 5, 7), 0.3, requires_grad=True)
    c, h = quantize_count(s, 8, iters=iters, kernel=kernel)
    assert torch.isfinite(c).all() and torch.isfinite(h).all()
    torch.testing.assert_close(c, torch.full((2, 8), 0.3))
    expected = torch.zeros(2, 8)
    expected[:, 0] = 1
    torch.testing.assert_close(h, expected)
    (g,) = torch.autograd.grad(h.sum(), s)
    assert torch.isfinite(g).all()


def test_image_shape_is_flattened_and_module():
    s = torch.rand(2, 6, 5, dtype=F64)
    c, h = quantize_count(s, 5, iters=1)
    c2, h2 = quantize_count(s.reshape(2, -1), 5, iters=1)
    torch.testing.assert_close(h, h2)
    m = QuantizeCount(5, iters=1, kernel="triangular", quantiles=(0.0, 1.0))
    assert (m.levels, m.iters, m.kernel, m.quantiles) == (5, 1, "triangular", (0.0, 1.0))
    torch.testing.assert_close(m(s)[1], h)
    torch.testing.assert_close(m(s, centers=c)[1], quantize_count(s, 5, centers=c)[1])
    assert "levels=5" in repr(m)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_computes_in_float32(dtype):
    s = (torch.rand(2, 300) * 2 - 1).to(dtype)
    c, h = quantize_count(s, 16, iters=2)
    assert c.dtype == dtype and h.dtype == dtype
    c32, h32 = quantize_count(s.float(), 16, iters=2)
    torch.testing.assert_close(c, c32.to(dtype))
    torch.testing.assert_close(h, h32.to(dtype))


# ----------------------------------------------------------------------------
# reproject
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["triangular", "stlnet"])
@pytest.mark.parametrize("source", list(INPUTS))
@pytest.mark.parametrize("iters", [0, 2])
def test_reproject_matches_dense(kernel, source, iters):
    s = INPUTS[source]()
    B = s.shape[0]
    L, D = 11, 5
    c, _ = quantize_count(s, L, iters=iters, kernel=kernel)
    table = torch.randn(B, D, L, dtype=F64, requires_grad=True)
    s = s.clone().requires_grad_()
    out = reproject(table, s, c, kernel=kernel)
    t2 = table.detach().clone().requires_grad_()
    s2 = s.detach().clone().requires_grad_()
    out_ref = t2 @ dense_E(s2, c, kernel).transpose(1, 2)
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(out)
    g = torch.autograd.grad((out * w).sum(), (table, s))
    g_ref = torch.autograd.grad((out_ref * w).sum(), (t2, s2))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_reproject_image_shape_and_equalization():
    s = torch.randn(2, 60, 70, dtype=F64) * torch.tensor([1.0, 0.1], dtype=F64)[:, None, None]
    c, h = quantize_count(s, 64, iters=1)
    cdf = h.cumsum(1) - 0.5 * h  # mid-bin CDF
    eq = reproject(cdf[:, None], s, c)
    assert eq.shape == (2, 1, 60, 70)
    assert eq.min() >= 0 and eq.max() <= 1 + 1e-12
    # equalization flattens the distribution: quartiles close to 0.25 / 0.5 / 0.75
    q = torch.quantile(eq.reshape(2, -1), torch.tensor([0.25, 0.5, 0.75], dtype=F64), dim=1)
    torch.testing.assert_close(q, torch.tensor([0.25, 0.5, 0.75], dtype=F64)[:, None].expand(3, 2),
                               atol=0.02, rtol=0)


def test_reproject_gradcheck_and_chunks():
    from sstkd.ops import quantize as q

    s = torch.rand(2, 40, dtype=F64, requires_grad=True)
    c, _ = quantize_count(s, 6)
    table = torch.randn(2, 7, 6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, x: reproject(t, x, c), (table, s))
    # the channel-chunked path gives the same result as a single chunk
    old = q._chunks
    try:
        q._chunks = lambda D, N, budget=0: [(d, d + 1) for d in range(D)]
        chunked = reproject(table, s, c)
    finally:
        q._chunks = old
    torch.testing.assert_close(chunked, reproject(table, s, c), rtol=0, atol=0)


# ----------------------------------------------------------------------------
# cooccurrence
# ----------------------------------------------------------------------------
def dense_cooc(s3, c, offsets, kernel):
    B, H, W = s3.shape
    E = dense_E(s3.reshape(B, -1), c, kernel).reshape(B, H, W, -1)
    M = 0
    for dy, dx in offsets:
        y0, y1, x0, x1 = max(0, -dy), H - max(0, dy), max(0, -dx), W - max(0, dx)
        a = E[:, y0:y1, x0:x1]
        b = E[:, y0 + dy:y1 + dy, x0 + dx:x1 + dx]
        M = M + torch.einsum("bhwi,bhwj->bij", a, b)
    return M / M.sum((1, 2), keepdim=True)


@pytest.mark.parametrize("kernel", ["triangular", "stlnet"])
@pytest.mark.parametrize("offsets", [((0, 1), (1, 0)), ((2, -1),), ((0, 0), (-1, -3), (3, 2))])
def test_cooccurrence_matches_dense(kernel, offsets):
    s = camera_cosine(20)
    s = torch.cat([s, torch.rand(1, 20, 20, dtype=F64) * 2 - 1]).requires_grad_()
    c, _ = quantize_count(s, 7, iters=1, kernel=kernel)
    M = cooccurrence(s, c, offsets=offsets, kernel=kernel)
    assert M.shape == (3, 7, 7)
    sd = s.detach().clone().requires_grad_()
    M_ref = dense_cooc(sd, c, offsets, kernel)
    torch.testing.assert_close(M, M_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(M.sum((1, 2)), torch.ones(3, dtype=F64))
    w = torch.randn_like(M)
    torch.testing.assert_close(torch.autograd.grad((M * w).sum(), s)[0],
                               torch.autograd.grad((M_ref * w).sum(), sd)[0], rtol=1e-10, atol=1e-12)


def test_cooccurrence_of_constant_and_symmetric_offsets():
    s = torch.full((1, 4, 5), 2.0)
    c, _ = quantize_count(s, 3)
    M = cooccurrence(s, c)
    assert M[0, 0, 0] == 1 and M.sum() == 1
    s = torch.rand(2, 9, 9, dtype=F64)
    c, _ = quantize_count(s, 5)
    M = cooccurrence(s, c, offsets=((0, 1), (0, -1)))
    torch.testing.assert_close(M, M.transpose(1, 2))


# ----------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------
S = torch.rand(2, 10)
C = torch.sort(torch.rand(2, 4), dim=1).values
NAN = torch.tensor([[0.1, float("nan")], [0.2, 0.3]])
INF = torch.tensor([[0.1, float("inf")], [0.2, 0.3]])

QC_BAD = [
    (dict(s=[[0.1, 0.2]]), TypeError, "s"),
    (dict(s=torch.ones(2, 3, dtype=torch.int64)), TypeError, "s"),
    (dict(s=torch.rand(5)), ValueError, "s"),
    (dict(s=torch.rand(1, 1, 2, 2)), ValueError, "s"),
    (dict(s=torch.rand(2, 0)), ValueError, "s"),
    (dict(s=NAN), ValueError, "s"),
    (dict(s=INF), ValueError, "s"),
    (dict(levels=1), ValueError, "levels"),
    (dict(levels=4.0), TypeError, "levels"),
    (dict(levels=True), TypeError, "levels"),
    (dict(iters=-1), ValueError, "iters"),
    (dict(iters=1.5), TypeError, "iters"),
    (dict(kernel="box"), ValueError, "kernel"),
    (dict(kernel=None), TypeError, "kernel"),
    (dict(centers=C[:1]), ValueError, "centers"),
    (dict(centers=torch.rand(2, 5).sort(1).values), ValueError, "centers"),
    (dict(centers=C.flip(1)), ValueError, "centers"),
    (dict(centers=C[0]), ValueError, "centers"),
    (dict(centers=C.int()), TypeError, "centers"),
    (dict(centers=torch.tensor([[0.0, 1, 2, float("nan")]] * 2)), ValueError, "centers"),
    (dict(centers=C, iters=2), ValueError, "iters"),
    (dict(centers=C, quantiles=(0.1, 0.9)), ValueError, "quantiles"),
    (dict(quantiles=(0.5, 0.5)), ValueError, "quantiles"),
    (dict(quantiles=(-0.1, 0.9)), ValueError, "quantiles"),
    (dict(quantiles=(0.1, 1.5)), ValueError, "quantiles"),
    (dict(quantiles=(0.1,)), TypeError, "quantiles"),
    (dict(quantiles="ab"), TypeError, "quantiles"),
    (dict(quantiles=(0.1, "x")), TypeError, "quantiles"),
    (dict(backend="gpu"), ValueError, "backend"),
]


@pytest.mark.parametrize("kwargs,exc,name", QC_BAD)
def test_quantize_count_bad_input(kwargs, exc, name):
    args = dict(s=S, levels=4)
    args.update(kwargs)
    with debug_checks(True), pytest.raises(exc, match=rf"^{name}\b"):  # value checks included
        quantize_count(**args)


T = torch.randn(2, 3, 4)
RP_BAD = [
    (dict(table=T[0]), ValueError, "table"),
    (dict(table=T[:1]), ValueError, "table"),
    (dict(table=T.long()), TypeError, "table"),
    (dict(table=T * float("nan")), ValueError, "table"),
    (dict(table=torch.randn(2, 3, 5)), ValueError, "centers"),
    (dict(s=torch.rand(3, 10)), ValueError, "table"),
    (dict(s=torch.rand(10)), ValueError, "s"),
    (dict(s=NAN), ValueError, "s"),
    (dict(centers=C.flip(1)), ValueError, "centers"),
    (dict(centers=None), TypeError, "centers"),
    (dict(kernel="x"), ValueError, "kernel"),
    (dict(backend="nope"), ValueError, "backend"),
]


@pytest.mark.parametrize("kwargs,exc,name", RP_BAD)
def test_reproject_bad_input(kwargs, exc, name):
    args = dict(table=T, s=S, centers=C)
    args.update(kwargs)
    with debug_checks(True), pytest.raises(exc, match=rf"^{name}\b"):  # value checks included
        reproject(**args)


S3 = torch.rand(2, 5, 6)
CO_BAD = [
    (dict(s=S), ValueError, "s"),
    (dict(s=S3.half().int()), TypeError, "s"),
    (dict(s=S3 * float("inf")), ValueError, "s"),
    (dict(centers=C[:1]), ValueError, "centers"),
    (dict(centers=C[:, :1]), ValueError, "centers"),
    (dict(centers=C.flip(1)), ValueError, "centers"),
    (dict(offsets=()), TypeError, "offsets"),
    (dict(offsets=((0, 6),)), ValueError, "offsets"),
    (dict(offsets=((5, 0),)), ValueError, "offsets"),
    (dict(offsets=((0, 1.0),)), TypeError, "offsets"),
    (dict(offsets=((0,),)), TypeError, "offsets"),
    (dict(offsets="01"), TypeError, "offsets"),
    (dict(kernel="hat"), ValueError, "kernel"),
    (dict(backend=3), ValueError, "backend"),
]


@pytest.mark.parametrize("kwargs,exc,name", CO_BAD)
def test_cooccurrence_bad_input(kwargs, exc, name):
    args = dict(s=S3, centers=C)
    args.update(kwargs)
    with debug_checks(True), pytest.raises(exc, match=rf"^{name}\b"):  # value checks included
        cooccurrence(**args)


def test_module_bad_input():
    with pytest.raises(ValueError, match="^levels"):
        QuantizeCount(1)
    with pytest.raises(ValueError, match="^kernel"):
        QuantizeCount(4, kernel="box")
    with pytest.raises(ValueError, match="^quantiles"):
        QuantizeCount(4, quantiles=(0.9, 0.1))


def test_value_checks_are_off_by_default_and_non_finite_input_propagates(monkeypatch):
    """Without debug checks nothing waits for the device: NaN/Inf and unsorted centers are not
    refused; an image with a non-finite intensity gets non-finite centers (others are unaffected)."""
    monkeypatch.delenv("SSTKD_DEBUG_CHECKS", raising=False)
    for bad in (NAN, INF):
        c, h = quantize_count(bad, 4, iters=2)
        assert not torch.isfinite(c[0]).any() and torch.isfinite(c[1]).all()
        torch.testing.assert_close(c[1:], quantize_count(bad[1:], 4, iters=2)[0])
    quantize_count(S, 4, centers=C.flip(1))  # unsorted: unspecified counts, no error
    reproject(T, S, C.flip(1))
    cooccurrence(S3, C.flip(1))
    monkeypatch.setenv("SSTKD_DEBUG_CHECKS", "1")
    with pytest.raises(ValueError, match="^s: contains NaN"):
        quantize_count(NAN, 4)
    monkeypatch.setenv("SSTKD_DEBUG_CHECKS", "maybe")
    with pytest.raises(ValueError, match="^SSTKD_DEBUG_CHECKS"):
        quantize_count(S, 4)
