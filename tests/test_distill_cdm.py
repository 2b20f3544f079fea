"""CDM: the structural texture loss L_str."""
import numpy as np
import pytest
import torch

from sstkd.distill import ContourletDecompositionModule, pad_to_size
from sstkd.ops.contourlet import contourlet_dec


def _literal_str(f_s, f_t, nlevs, size, weights=None):
    """Decompose student and teacher separately; per-sub-band MSE; weighted mean."""
    def pad(x):  # symmetric extension x | flip(x) | x | ... along each axis, cut to size
        for dim, n in ((2, size[0]), (3, size[1])):
            period = torch.cat([x, x.flip(dim)], dim)
            x = torch.cat([period] * (n // period.shape[dim] + 1), dim).narrow(dim, 0, n)
        return x

    low_s, bands_s = contourlet_dec(pad(f_s), nlevs, backend="torch")
    low_t, bands_t = contourlet_dec(pad(f_t), nlevs, backend="torch")
    pairs = [(low_s, low_t)] + [(a, b) for ls, lt in zip(bands_s, bands_t) for a, b in zip(ls, lt)]
    mse = torch.stack([((a - b) ** 2).mean() for a, b in pairs])
    w = torch.ones_like(mse) if weights is None else torch.tensor(weights, dtype=mse.dtype)
    return (mse * w).sum() / w.sum(), mse


@pytest.mark.parametrize("nlevs,shape", [((3, 3), (2, 3, 24, 16)), ((2, 3), (1, 2, 21, 30)), ((0, 2), (2, 2, 13, 9))])
def test_str_equals_literal_separate_decompositions(nlevs, shape):
    f_s = torch.randn(shape, dtype=torch.float64)
    f_t = torch.randn(shape, dtype=torch.float64)
    cdm = ContourletDecompositionModule(nlevs, backend="torch")
    size = cdm.padded_size(*shape[-2:])
    loss, bands = cdm(f_s, f_t)
    ref_loss, ref_bands = _literal_str(f_s, f_t, list(nlevs), size)
    assert bands.shape == (cdm.num_bands,)
    torch.testing.assert_close(bands, ref_bands, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)


def test_band_weights_per_band_and_per_level():
    f_s, f_t = torch.randn(1, 2, 24, 24, dtype=torch.float64), torch.randn(1, 2, 24, 24, dtype=torch.float64)
    per_level = [0.5, 1.0, 2.0]  # lowpass, coarse level (8 bands), fine level (8 bands)
    cdm = ContourletDecompositionModule((3, 3), band_weights=per_level)
    expanded = [0.5] + [1.0] * 8 + [2.0] * 8
    loss, bands = cdm(f_s, f_t)
    ref, _ = _literal_str(f_s, f_t, [3, 3], (24, 24), expanded)
    torch.testing.assert_close(loss, ref)
    # weighting only the lowpass gives the lowpass MSE
    only_low = ContourletDecompositionModule((3, 3), band_weights=[1.0] + [0.0] * 16)(f_s, f_t)[0]
    torch.testing.assert_close(only_low, bands[0])
    with pytest.raises(ValueError, match="band_weights"):
        ContourletDecompositionModule((3, 3), band_weights=[1.0] * 5)
    with pytest.raises(ValueError, match="band_weights"):
        ContourletDecompositionModule((3, 3), band_weights=[0.0] * 17)
    with pytest.raises(ValueError, match="band_weights"):
        ContourletDecompositionModule((3, 3), band_weights=[-1.0] + [1.0] * 16)


def test_zero_for_equal_features_and_positive_otherwise():
    f = torch.randn(2, 4, 16, 20)
    cdm = ContourletDecompositionModule()
    loss, bands = cdm(f, f.clone())
    assert float(loss) == 0.0 and float(bands.abs().max()) == 0.0
    g = f + 0.1 * torch.randn_like(f)
    loss, bands = cdm(g, f)
    assert float(loss) > 0 and bool((bands > 0).all())


def test_gradient_reaches_the_student_only_and_matches_the_literal_gradient():
    f_s = torch.randn(1, 2, 24, 16, dtype=torch.float64, requires_grad=True)
    f_t = torch.randn(1, 2, 24, 16, dtype=torch.float64, requires_grad=True)
    ContourletDecompositionModule()(f_s, f_t)[0].backward()
    assert f_t.grad is None
    f_s2 = f_s.detach().clone().requires_grad_(True)
    _literal_str(f_s2, f_t.detach(), [3, 3], (24, 16))[0].backward()
    torch.testing.assert_close(f_s.grad, f_s2.grad, rtol=1e-9, atol=1e-12)


def test_low_precision_inputs_compute_in_float32():
    f_s, f_t = torch.randn(1, 2, 24, 16), torch.randn(1, 2, 24, 16)
    ref, _ = ContourletDecompositionModule()(f_s, f_t)
    got, _ = ContourletDecompositionModule()(f_s.bfloat16(), f_t.bfloat16())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("mode,np_mode", [("symmetric", "symmetric"), ("reflect", "reflect"), ("replicate", "edge"),
                                          ("circular", "wrap"), ("zeros", "constant")])
def test_pad_to_size_matches_numpy(mode, np_mode):
    x = torch.randn(1, 2, 5, 3, dtype=torch.float64)
    for size in [(5, 3), (8, 7), (13, 11)]:  # includes pads larger than the map
        got = pad_to_size(x, size, mode)
        ref = np.pad(x.numpy(), ((0, 0), (0, 0), (0, size[0] - 5), (0, size[1] - 3)), mode=np_mode)
        np.testing.assert_array_equal(got.numpy(), ref)
    with pytest.raises(ValueError, match="pad_mode"):
        pad_to_size(x, (8, 8), "mirror")
    with pytest.raises(ValueError, match="size"):
        pad_to_size(x, (4, 3))


def test_padded_size_is_the_smallest_valid_size():
    from sstkd.ops.contourlet import check_contourlet_size

    cdm = ContourletDecompositionModule((3, 3))
    for h, w in [(1, 1), (16, 16), (24, 16), (33, 17), (128, 256)]:
        hp, wp = cdm.padded_size(h, w)
        check_contourlet_size(hp, wp, [3, 3])
        assert hp >= h and wp >= w
        mh, mw = cdm.multiple
        for smaller in [(hp - mh, wp), (hp, wp - mw)]:
            if smaller[0] >= h and smaller[1] >= w:
                with pytest.raises(ValueError):
                    check_contourlet_size(*smaller, [3, 3])


def test_bad_input_names_the_argument():
    cdm = ContourletDecompositionModule()
    with pytest.raises(ValueError, match="s_low"):
        cdm(torch.randn(1, 2, 24, 16), torch.randn(1, 2, 24, 24))
    with pytest.raises(ValueError, match="t_low"):
        cdm(torch.randn(1, 2, 24, 16), torch.randn(2, 24, 16))
    with pytest.raises(ValueError, match="nlevs"):
        ContourletDecompositionModule([])
    with pytest.raises(ValueError, match="pad_mode"):
        ContourletDecompositionModule(pad_mode="bogus")


def test_chunked_recompute_matches_the_plain_path_and_saves_only_the_difference(monkeypatch):
    import sstkd.distill.cdm as cdm_module

    monkeypatch.setattr(cdm_module, "RECOMPUTE_CHUNK_ELEMENTS", 2 * 24 * 16 * 3)  # 3 channels per chunk
    f_s = torch.randn(2, 10, 24, 16, dtype=torch.float64, requires_grad=True)
    f_t = torch.randn(2, 10, 24, 16, dtype=torch.float64)
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        a, bands_a = ContourletDecompositionModule()(f_s, f_t)
    (ga,) = torch.autograd.grad(a, f_s)
    b, bands_b = ContourletDecompositionModule(recompute=False)(f_s, f_t)
    (gb,) = torch.autograd.grad(b, f_s)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(bands_a, bands_b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-14)
    # kept for backward: (views of) the one difference map, plus tiny tensors
    big = [n for n in saved.values() if n > 1024]
    assert big == [f_s.numel() * 8]
