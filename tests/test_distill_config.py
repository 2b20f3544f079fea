"""SSTKDConfig: defaults, presets, from_dict validation."""
import dataclasses

import pytest

from sstkd.distill import PRESETS, SSTKDConfig, SSTKDLoss


def test_defaults_are_the_documented_recipe():
    c = SSTKDConfig()
    assert (c.use_pi, c.use_ho, c.use_str, c.use_sta) == (True, True, True, True)
    assert (c.lambda_pi, c.lambda_adv, c.lambda_d, c.gp_weight) == (10.0, 0.001, 0.1, 10.0)
    assert (c.d_lr, c.d_betas, c.temperature) == (4e-4, (0.9, 0.99), 1.0)
    assert c.str_nlevs == (3, 3) and c.sta_levels == 128 and c.sta_iters == 3
    assert c.sta_quantiles == (0.01, 0.99) and c.sta_tau == 4.0
    # calibrated by gradient share (docs/method.md, "Defaults")
    assert (c.lambda_str, c.lambda_sta, c.sta_hist_bandwidth) == (2.0, 0.1, 1.0 / 16)
    assert (c.sta_w_hist, c.sta_w_cdf, c.sta_w_map, c.sta_w_range) == (1.0, 10.0, 1.0, 1.0)
    assert SSTKDLoss(4, 4, 3, c).dtiem.hist_bandwidth == 1.0 / 16
    assert SSTKDConfig.preset("sstkd") == c


def test_presets():
    kd = SSTKDConfig.preset("kd")
    assert kd.use_pi and kd.use_ho and not kd.use_str and not kd.use_sta
    stl = SSTKDConfig.preset("stlnet_sta")
    assert stl.use_sta and stl.use_str
    assert (stl.sta_robust_range, stl.sta_kernel, stl.sta_iters, stl.sta_clip, stl.sta_equalize) == (
        False, "stlnet", 0, False, False)
    assert SSTKDConfig.preset("kd", lambda_pi=3.0).lambda_pi == 3.0
    assert set(PRESETS) == {"sstkd", "kd", "stlnet_sta"}
    with pytest.raises(ValueError, match="preset"):
        SSTKDConfig.preset("nope")
    with pytest.raises(ValueError, match="lambda_typo"):
        SSTKDConfig.preset("kd", lambda_typo=1.0)


def test_from_dict_rejects_unknown_keys_naming_them():
    with pytest.raises(ValueError, match="lamda_pi"):
        SSTKDConfig.from_dict({"lamda_pi": 1.0, "use_ho": False})
    with pytest.raises(TypeError, match="config"):
        SSTKDConfig.from_dict([("use_ho", False)])


def test_from_dict_yaml_style_values_and_round_trip():
    c = SSTKDConfig.from_dict({"preset": "kd", "str_nlevs": [2, 3], "sta_quantiles": [0.02, 0.98],
                               "str_band_weights": [1, 2, 3], "lambda_pi": 5})
    assert not c.use_str and c.str_nlevs == (2, 3) and c.sta_quantiles == (0.02, 0.98)
    assert c.str_band_weights == (1.0, 2.0, 3.0) and c.lambda_pi == 5
    assert SSTKDConfig.from_dict(c.to_dict()) == c
    assert SSTKDConfig.from_dict(None) == SSTKDConfig()
    yaml = pytest.importorskip("yaml")
    assert SSTKDConfig.from_dict(yaml.safe_load(yaml.safe_dump(c.to_dict()))) == c
    # every field is documented in docs/method.md
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "method.md").read_text()
    missing = [f.name for f in dataclasses.fields(SSTKDConfig) if f"`{f.name}`" not in doc]
    assert not missing, missing


@pytest.mark.parametrize("key,value,exc", [
    ("use_pi", "yes", TypeError),
    ("lambda_str", -1.0, ValueError),
    ("lambda_sta", float("nan"), ValueError),
    ("lambda_adv", "0.1", TypeError),
    ("temperature", 0.0, ValueError),
    ("sta_tau", 0.5, ValueError),
    ("sta_levels", 1, ValueError),
    ("sta_iters", 1.5, TypeError),
    ("str_nlevs", [], TypeError),
    ("str_nlevs", [3, -1], ValueError),
    ("sta_quantiles", [0.1], ValueError),
    ("sta_hist_bandwidth", -0.1, ValueError),
    ("sta_hist_bandwidth", float("inf"), ValueError),
    ("align", "maybe", ValueError),
    ("str_pad_mode", "mirror", ValueError),
    ("d_lr", 0, ValueError),
])
def test_bad_values_name_the_key(key, value, exc):
    with pytest.raises(exc, match=key):
        SSTKDConfig.from_dict({key: value})


def test_module_level_errors_surface_at_construction():
    # checks the dataclass leaves to the modules still fire when SSTKDLoss is built
    with pytest.raises(ValueError, match="sta_quantiles"):
        SSTKDLoss(4, 4, 3, {"sta_quantiles": [0.9, 0.1]})
    with pytest.raises(ValueError, match="band_weights"):
        SSTKDLoss(4, 4, 3, {"str_band_weights": [1.0, 2.0]})
    with pytest.raises(ValueError, match="sta_kernel"):
        SSTKDLoss(4, 4, 3, {"sta_kernel": "gauss"})
