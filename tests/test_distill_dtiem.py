"""DTIEM: the statistical texture loss L_sta and each of its steps."""
import math

import pytest
import torch
import torch.nn.functional as F

from sstkd.debug import debug_checks
from sstkd.distill import DTIEM, clip_histogram, intensity_map, overflow
from sstkd.distill.dtiem import smooth_histogram


# ----------------------------------------------------------------------------- a literal dense DTIEM
def _dense_encoding(s, c):
    """E (B, N, L) built densely: hat functions with the local spacing; flat beyond the outermost centers."""
    s = s[:, :, None]
    c = c[:, None, :]
    left = torch.cat([c[..., :1] - 1.0, c[..., :-1]], -1)  # c_{n-1} (dummy for n = 0)
    right = torch.cat([c[..., 1:], c[..., -1:] + 1.0], -1)  # c_{n+1} (dummy for n = L-1)
    rise = (s - left) / (c - left)
    fall = (right - s) / (right - c)
    e = torch.where(s <= c, rise, fall).clamp(0, 1)
    L = c.shape[-1]
    first = torch.arange(L) == 0
    last = torch.arange(L) == L - 1
    e = torch.where(first & (s <= c), torch.ones_like(e), e)
    e = torch.where(last & (s >= c), torch.ones_like(e), e)
    return e


def _dense_centers(s, L, iters, quantiles):
    with torch.no_grad():
        if quantiles is None:
            lo, hi = s.amin(1), s.amax(1)
        else:
            lo, hi = torch.quantile(s, quantiles[0], dim=1), torch.quantile(s, quantiles[1], dim=1)
        n = torch.arange(L, dtype=s.dtype)
        c = lo[:, None] + (n + 0.5) * ((hi - lo) / L)[:, None]
        for _ in range(iters):
            e = _dense_encoding(s, c)
            mass = e.sum(1)
            c = torch.where(mass > 0, (e * s[:, :, None]).sum(1) / mass.clamp_min(1e-300), c).sort(1).values
    return c


def _naive_clahe(h, limit, max_rounds=10000):
    """Clip at the limit and spread the excess uniformly over all bins, until nothing exceeds the limit."""
    for _ in range(max_rounds):
        excess = (h - limit).clamp_min(0).sum(1, keepdim=True)
        if float(excess.detach().max()) < 1e-15:
            break
        h = h.clamp_max(limit) + excess / h.shape[1]
    return h


def _literal_smooth(h, sigma):
    """Bin k's mass spread over bins n with Gaussian weights exp(-(n-k)^2 / 2 sigma^2) normalized over n."""
    if sigma == 0:
        return h
    L = h.shape[1]
    out = torch.zeros_like(h)
    for k in range(L):
        w = torch.tensor([math.exp(-((n - k) ** 2) / (2 * sigma**2)) for n in range(L)], dtype=h.dtype)
        out = out + h[:, k : k + 1] * (w / w.sum())[None, :]
    return out


def _literal_sta(f_s, f_t, L, iters, quantiles, tau, w, bandwidth=0.0):
    """w = (w_hist, w_cdf, w_map, w_range); the histogram term compares densities smoothed by bandwidth·L bins."""
    def intensity(f):
        g = f.mean((2, 3), keepdim=True).expand_as(f)
        return F.cosine_similarity(f, g, dim=1, eps=1e-12).flatten(1)

    s_t, s_s = intensity(f_t), intensity(f_s)
    c = _dense_centers(s_t, L, iters, quantiles)
    e_t, e_s = _dense_encoding(s_t, c), _dense_encoding(s_s, c)
    h_t = e_t.sum(1) / e_t.sum((1, 2))[:, None]
    h_s = e_s.sum(1) / e_s.sum((1, 2))[:, None]
    h_t, h_s = _naive_clahe(h_t, tau / L), _naive_clahe(h_s, tau / L)
    cdf_t, cdf_s = h_t.cumsum(1), h_s.cumsum(1)
    map_t = torch.einsum("bnl,bl->bn", e_t, cdf_t)
    map_s = torch.einsum("bnl,bl->bn", e_s, cdf_s)
    # part of each intensity beyond the teacher's outermost centers, written as branches
    lo, hi = c[:, :1], c[:, -1:]
    over = lambda s: torch.where(s < lo, s - lo, torch.where(s > hi, s - hi, torch.zeros_like(s)))  # noqa: E731
    mse = lambda a, b: ((a - b) ** 2).mean()  # noqa: E731
    terms = {
        # histograms compared as smoothed densities L·G(h)
        "sta_hist": mse(_literal_smooth(h_s, bandwidth * L), _literal_smooth(h_t, bandwidth * L)) * L**2,
        "sta_cdf": mse(cdf_s, cdf_t),
        "sta_map": mse(map_s, map_t),
        "sta_range": mse(over(s_s), over(s_t)),
    }
    terms["sta"] = sum(wk * terms[k] for wk, k in zip(w, ("sta_hist", "sta_cdf", "sta_map", "sta_range")))
    return terms, c


@pytest.mark.parametrize("bandwidth", [0.0, 0.25])
def test_sta_equals_a_literal_dense_computation_and_its_gradient(bandwidth):
    torch.manual_seed(3)
    f_t = torch.randn(2, 6, 7, 9, dtype=torch.float64) + 0.5
    f_s = (f_t + 0.7 * torch.randn_like(f_t)).requires_grad_(True)
    w = (0.5, 3.0, 2.0, 1.5)
    mod = DTIEM(levels=8, iters=2, quantiles=(0.05, 0.95), tau=1.5, hist_bandwidth=bandwidth, w_hist=w[0],
                w_cdf=w[1], w_map=w[2], w_range=w[3], backend="torch")
    got = mod(f_s, f_t)
    ref, centers = _literal_sta(f_s, f_t, 8, 2, (0.05, 0.95), 1.5, w, bandwidth)
    torch.testing.assert_close(mod.describe(f_t)["centers"], centers, rtol=1e-10, atol=1e-12)
    assert float(ref["sta_range"].detach()) > 0  # some student pixels lie beyond the teacher's levels
    for k in ("sta", "sta_hist", "sta_cdf", "sta_map", "sta_range"):
        torch.testing.assert_close(got[k], ref[k], rtol=1e-9, atol=1e-12, msg=k)
    assert float(got["sta"].detach()) > 0
    (g_mod,) = torch.autograd.grad(got["sta"], f_s)
    (g_ref,) = torch.autograd.grad(ref["sta"], f_s)
    assert float(g_mod.abs().max()) > 0
    torch.testing.assert_close(g_mod, g_ref, rtol=1e-7, atol=1e-10)


def test_intensity_map_is_cosine_to_the_image_mean():
    f = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    g = f.mean((2, 3), keepdim=True).expand_as(f)
    torch.testing.assert_close(intensity_map(f), F.cosine_similarity(f, g, dim=1))
    norm = intensity_map(f, "norm")
    torch.testing.assert_close(norm.mean((1, 2)), torch.ones(2, dtype=torch.float64))
    assert intensity_map(f.bfloat16()).dtype == torch.float32
    assert bool(torch.isfinite(intensity_map(torch.zeros(1, 3, 2, 2))).all())
    with pytest.raises(ValueError, match="intensity"):
        intensity_map(f, "bogus")


def test_zero_for_equal_features_and_positive_otherwise():
    f = torch.randn(2, 8, 12, 12)
    mod = DTIEM(levels=16)
    out = mod(f, f.clone())
    for k in ("sta", "sta_hist", "sta_cdf", "sta_map", "sta_range"):
        assert float(out[k]) == pytest.approx(0.0, abs=1e-10), k
    out = mod(f + 0.5 * torch.randn_like(f), f)
    assert float(out["sta"]) > 1e-4 and float(out["sta_map"]) > 0


def _planted_outliers():
    """Features whose cosine intensities are a tight bulk plus a few extreme pixels."""
    torch.manual_seed(0)
    base = torch.ones(1, 4, 16, 16)
    f = base + 0.05 * torch.randn(1, 4, 16, 16)
    f[0, :, 0, :2] = -base[0, :, 0, :2]  # 2 of 256 pixels (< 1%) point away from the mean: cosine ≈ -1
    return f


def test_robust_range_ignores_planted_outliers():
    f = _planted_outliers()
    s = intensity_map(f).flatten()
    assert float(s.min()) < -0.9 and float(torch.quantile(s, 0.02)) > 0.9
    robust = DTIEM(levels=32, iters=0, robust_range=True, clip=False).describe(f)
    plain = DTIEM(levels=32, iters=0, robust_range=False, clip=False).describe(f)
    # the robust centers span the bulk, the plain ones stretch to the outliers
    assert float(robust["centers"].min()) > 0.9
    assert float(plain["centers"].min()) < -0.9
    occupied = lambda d: int((d["hist"] > 0).sum())  # noqa: E731
    assert occupied(robust) > 20  # the bulk is resolved over most levels
    assert occupied(plain) <= 6  # the bulk falls into a couple of levels, most are empty


def _quantization_error(s, centers):
    return ((s[:, :, None] - centers[:, None, :]) ** 2).amin(-1).mean()


def test_lloyd_steps_do_not_increase_quantization_error():
    torch.manual_seed(0)
    # skewed intensities: uniform levels waste most of their range
    f = torch.ones(1, 3, 32, 32)
    f[:, 0] += torch.distributions.Exponential(4.0).sample((32, 32))
    s = intensity_map(f).flatten(1)
    errors = []
    for iters in range(5):
        c = DTIEM(levels=8, iters=iters, robust_range=False).describe(f)["centers"]
        errors.append(float(_quantization_error(s, c)))
    for a, b in zip(errors, errors[1:]):
        assert b <= a * (1 + 1e-6)
    assert errors[-1] < 0.8 * errors[0]


def test_clipping_bounds_the_largest_bin_and_preserves_the_total():
    torch.manual_seed(0)
    h = torch.rand(3, 16, dtype=torch.float64) ** 6
    h[0, 3] += 5.0  # one huge peak
    h[2] = 0.0
    h[2, 7] = 1.0  # all the mass in one bin
    h = h / h.sum(1, keepdim=True)
    limit = 2.0 / 16
    out = clip_histogram(h, limit)
    assert float(out.max()) <= limit + 1e-12
    torch.testing.assert_close(out.sum(1), h.sum(1))
    torch.testing.assert_close(out, _naive_clahe(h, limit), rtol=1e-9, atol=1e-12)
    assert bool((out >= h.clamp_max(limit) - 1e-15).all())  # nothing is taken from bins under the limit
    # a histogram already under the limit is unchanged
    flat = torch.full((1, 16), 1 / 16, dtype=torch.float64)
    torch.testing.assert_close(clip_histogram(flat, limit), flat)
    # single-pass CLAHE: one clip, uniform redistribution, may exceed the limit again
    single = clip_histogram(h, limit, "single")
    torch.testing.assert_close(single, h.clamp_max(limit) + (h - limit).clamp_min(0).sum(1, keepdim=True) / 16)
    torch.testing.assert_close(single.sum(1), h.sum(1))
    # a limit below total/L cannot hold the mass: every bin gets total/L
    torch.testing.assert_close(clip_histogram(h, 0.5 / 16), torch.full_like(h, 1 / 16))
    with pytest.raises(ValueError, match="redistribute"):
        clip_histogram(h, limit, "bogus")


def test_clip_switch_in_the_module():
    f = _planted_outliers()
    on = DTIEM(levels=32, iters=0, robust_range=False, clip=True, tau=4.0).describe(f)
    off = DTIEM(levels=32, iters=0, robust_range=False, clip=False).describe(f)
    assert float(off["clipped"].max()) > 4.0 / 32  # the bulk's peak
    assert float(on["clipped"].max()) <= 4.0 / 32 + 1e-6
    torch.testing.assert_close(on["clipped"].sum(1), torch.ones(1))
    assert off["clipped"] is off["hist"]


def test_cdf_is_monotone_and_ends_at_one_and_the_map_equalizes():
    f = torch.randn(2, 6, 20, 20)
    d = DTIEM(levels=32).describe(f)
    cdf = d["cdf"]
    assert bool((cdf[:, 1:] >= cdf[:, :-1]).all())
    torch.testing.assert_close(cdf[:, -1], torch.ones(2))
    m = d["map"]
    assert m.shape == (2, 20, 20) and float(m.min()) >= 0 and float(m.max()) <= 1 + 1e-6
    # equalization is order preserving: a brighter intensity never maps lower
    s, mm = d["s"].flatten(1), m.flatten(1)
    order = s.argsort(1)
    sorted_map = mm.gather(1, order)
    assert bool((sorted_map[:, 1:] >= sorted_map[:, :-1] - 1e-6).all())


def test_equalize_and_shared_center_switches():
    f_t = torch.randn(1, 4, 12, 12)
    f_s = 2.0 * f_t + 0.3 * torch.randn_like(f_t)
    no_eq = DTIEM(levels=16, equalize=False, w_hist=2.0, w_range=0.5)(f_s, f_t)
    assert set(no_eq) == {"sta", "sta_hist", "sta_range"}
    torch.testing.assert_close(no_eq["sta"], 2.0 * no_eq["sta_hist"] + 0.5 * no_eq["sta_range"])
    assert set(DTIEM(levels=16, w_range=0.0)(f_s, f_t)) == {"sta", "sta_hist", "sta_cdf", "sta_map"}
    shared = DTIEM(levels=16)
    own = DTIEM(levels=16, shared_centers=False)
    assert float((shared(f_s, f_t)["sta"] - own(f_s, f_t)["sta"]).abs()) > 0
    c_t = shared.describe(f_t)["centers"]
    assert not torch.allclose(own.describe(f_s)["centers"], c_t)


def test_stlnet_kernel_differs_from_triangular():
    f_t = torch.randn(1, 4, 12, 12)
    f_s = f_t + 0.3 * torch.randn_like(f_t)
    tri = DTIEM(levels=16, robust_range=False, iters=0, clip=False)(f_s, f_t)["sta_hist"]
    stl = DTIEM(levels=16, robust_range=False, iters=0, clip=False, kernel="stlnet")(f_s, f_t)["sta_hist"]
    assert float(tri) > 0 and float(stl) > 0 and float((tri - stl).abs()) > 0


def test_teacher_gets_no_gradient():
    f_t = torch.randn(1, 4, 12, 12, requires_grad=True)
    f_s = torch.randn(1, 4, 12, 12, requires_grad=True)
    DTIEM(levels=16)(f_s, f_t)["sta"].backward()
    assert f_t.grad is None and float(f_s.grad.abs().sum()) > 0


def test_smooth_histogram_preserves_mass_and_zero_is_identity():
    h = torch.rand(3, 32, dtype=torch.float64)
    torch.testing.assert_close(smooth_histogram(h, 3.0).sum(1), h.sum(1))
    assert smooth_histogram(h, 0.0) is h
    sm = smooth_histogram(h, 3.0)
    assert float(sm.std(1).max()) < float(h.std(1).min())  # smoothing flattens the fluctuations
    with pytest.raises(ValueError, match="sigma"):
        smooth_histogram(h, -1.0)


def test_smoothed_histogram_term_has_a_stable_l_independent_gradient():
    """The raw density term's gradient grows with L and jumps under tiny feature changes; the smoothed one's not."""
    torch.manual_seed(0)
    f_t = torch.randn(2, 8, 12, 12, dtype=torch.float64)
    f_s = f_t + 0.5 * torch.randn_like(f_t)
    step = 1e-7 * torch.randn_like(f_s)

    def grad(mod, x):
        x = x.clone().requires_grad_(True)
        return torch.autograd.grad(mod(x, f_t)["sta_hist"], x)[0]

    norms, jumps = {}, {}
    for bw in (0.0, 1.0 / 16):
        for L in (32, 128):
            # no clipping: at 144 pixels and L = 128 the clip limit 4/L cuts single-pixel spikes,
            # which couples the bins and is a different (clip) effect
            mod = DTIEM(levels=L, clip=False, hist_bandwidth=bw, backend="torch")
            g0, g1 = grad(mod, f_s), grad(mod, f_s + step)
            norms[bw, L] = float(g0.norm())
            jumps[bw, L] = float((g1 - g0).norm() / g0.norm())
    assert norms[0.0, 128] > 2.5 * norms[0.0, 32]  # raw: grows with L
    assert 0.5 < norms[1 / 16, 128] / norms[1 / 16, 32] < 2.0  # smoothed: about L-independent
    assert norms[1 / 16, 128] < 0.1 * norms[0.0, 128]
    assert jumps[1 / 16, 128] < 0.2 * jumps[0.0, 128]


def test_bad_arguments_name_the_key():
    with pytest.raises(ValueError, match="sta_hist_bandwidth"):
        DTIEM(hist_bandwidth=-0.1)
    with pytest.raises(ValueError, match="sta_tau"):
        DTIEM(tau=0.5)
    with pytest.raises(ValueError, match="sta_quantiles"):
        DTIEM(quantiles=(0.9, 0.1))
    with pytest.raises(ValueError, match="sta_kernel"):
        DTIEM(kernel="gauss")
    with pytest.raises(ValueError, match="sta_levels"):
        DTIEM(levels=1)
    with pytest.raises(ValueError, match="s_low"):
        DTIEM()(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 9))


def test_range_term_lifts_the_plateau_beyond_the_teachers_levels():
    torch.manual_seed(0)
    f_t = torch.ones(1, 16, 8, 8) + 0.1 * torch.rand(1, 16, 8, 8)  # intensities close to 1
    f_s = torch.randn(1, 16, 8, 8, requires_grad=True)  # intensities well below every teacher level
    c = DTIEM(levels=16).describe(f_t)["centers"]
    assert float(intensity_map(f_s.detach()).max()) < float(c.min())
    # every student pixel sits on the flat outer part of the encoding: no gradient without the range term
    (g_off,) = torch.autograd.grad(DTIEM(levels=16, w_range=0.0)(f_s, f_t)["sta"], f_s)
    assert float(g_off.abs().max()) == 0.0
    out = DTIEM(levels=16)(f_s, f_t)
    (g_on,) = torch.autograd.grad(out["sta"], f_s)
    assert float(out["sta_range"].detach()) > 0 and float(g_on.abs().max()) > 0
    # a gradient step along it raises the intensities towards the teacher's range
    with torch.no_grad():
        s_before = intensity_map(f_s).mean()
        s_after = intensity_map(f_s - 1.0 * g_on / g_on.norm()).mean()
    assert float(s_after) > float(s_before)
    # overflow is zero inside the range and signed outside
    s = torch.tensor([[-2.0, 0.0, 0.5, 1.0, 3.0]])
    torch.testing.assert_close(overflow(s, torch.tensor([[0.0, 1.0]])), torch.tensor([[-2.0, 0.0, 0.0, 0.0, 2.0]]))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_features(value):
    f = torch.randn(2, 4, 8, 8)
    bad = f.clone()
    bad[1, 0, 0, 0] = value
    names = {"sta", "sta_hist", "sta_cdf", "sta_map", "sta_range"}
    # default (no value checks, no host sync): a non-finite student or teacher gives NaN terms
    for args in ((bad, f), (f, bad), (bad, bad)):
        out = DTIEM(levels=16)(*args)
        assert set(out) == names
        assert all(bool(torch.isnan(v)) for v in out.values())
    with debug_checks(True):  # value checks: the same for the student, an error for the teacher
        out = DTIEM(levels=16)(bad, f)
        assert set(out) == names and all(bool(torch.isnan(v)) for v in out.values())
        with pytest.raises(ValueError, match="t_low"):
            DTIEM(levels=16)(f, bad)
