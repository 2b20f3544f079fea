"""Configs: _base_ inheritance, overrides, unknown keys, types; the real configs parse."""
import glob
import os

import pytest
import yaml

from sstkd.distill import SSTKDConfig
from sstkd.engine.config import ConfigError, DEFAULTS, load_config, resolve_config, save_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return str(path)


def test_base_inheritance_relative_and_merge(tmp_path):
    _write(tmp_path / "_base_" / "a.yaml", {"train": {"lr": 0.5, "iterations": 10}, "seed": 3})
    _write(tmp_path / "_base_" / "b.yaml", {"train": {"iterations": 20}, "model": {"base_width": 16}})
    cfg_path = _write(tmp_path / "sub" / "exp.yaml",
                      {"_base_": ["../_base_/a.yaml", "../_base_/b.yaml"], "train": {"batch_size": 4}})
    cfg = load_config(cfg_path)
    assert cfg["train"]["lr"] == 0.5            # from a
    assert cfg["train"]["iterations"] == 20     # b overrides a
    assert cfg["train"]["batch_size"] == 4      # own key
    assert cfg["train"]["momentum"] == DEFAULTS["train"]["momentum"]  # default filled in
    assert cfg["model"]["base_width"] == 16 and cfg["seed"] == 3
    assert cfg["name"] == "exp"


def test_nested_base_chain_and_string_base(tmp_path):
    _write(tmp_path / "a.yaml", {"seed": 1})
    _write(tmp_path / "b.yaml", {"_base_": "a.yaml", "train": {"iterations": 7}})
    cfg = load_config(_write(tmp_path / "c.yaml", {"_base_": "b.yaml"}))
    assert cfg["seed"] == 1 and cfg["train"]["iterations"] == 7


def test_circular_base_is_an_error(tmp_path):
    _write(tmp_path / "a.yaml", {"_base_": "b.yaml"})
    _write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")


def test_missing_base_names_the_file(tmp_path):
    p = _write(tmp_path / "a.yaml", {"_base_": "nope.yaml"})
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(p)


def test_overrides_parse_yaml_values(tmp_path):
    p = _write(tmp_path / "a.yaml", {})
    cfg = load_config(p, ["train.lr=0.02", "data.crop_size=[64, 32]", "train.amp=bf16",
                          "train.grad_clip=null", "model.aux=false", "train.weight_decay=1e-4",
                          "distill.loss.lambda_pi=3"])
    assert cfg["train"]["lr"] == 0.02
    assert cfg["data"]["crop_size"] == [64, 32]
    assert cfg["train"]["amp"] == "bf16"
    assert cfg["train"]["grad_clip"] is None
    assert cfg["model"]["aux"] is False
    assert cfg["train"]["weight_decay"] == pytest.approx(1e-4)
    assert cfg.distill.loss == SSTKDConfig(lambda_pi=3.0)  # the method's preset plus the override


@pytest.mark.parametrize("override, fragment", [
    ("train.lrr=0.1", "train.lrr"),
    ("nothing=1", "nothing"),
    ("model.name.x=1", "model.name.x"),
    ("train.lr", "key.sub=value"),
    ("=3", "empty key"),
    ("train.iterations=abc", "train.iterations"),
    ("train.amp=fp8", "train.amp"),
    ("method=distill", "method"),
    ("train.iterations=0", "train.iterations"),
    ("data.crop_size=[1, 2, 3]", "data.crop_size"),
])
def test_bad_overrides_name_the_key(tmp_path, override, fragment):
    p = _write(tmp_path / "a.yaml", {})
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
        load_config(p, [override])


def test_unknown_key_in_file_is_named(tmp_path):
    p = _write(tmp_path / "a.yaml", {"train": {"itertions": 5}})
    with pytest.raises(ConfigError, match="train.itertions"):
        load_config(p)
    p = _write(tmp_path / "b.yaml", {"modle": {}})
    with pytest.raises(ConfigError, match="modle"):
        load_config(p)


def test_wrong_type_and_missing_teacher(tmp_path):
    with pytest.raises(ConfigError, match="train.batch_size"):
        resolve_config({"train": {"batch_size": "eight"}})
    with pytest.raises(ConfigError, match="train.batch_size"):
        resolve_config({"train": {"batch_size": True}})
    with pytest.raises(ConfigError, match="teacher.name"):
        resolve_config({"method": "kd"})


def test_yaml11_float_strings_are_numbers():
    cfg = resolve_config({"train": {"weight_decay": "5e-4", "lr": 1}})
    assert cfg["train"]["weight_decay"] == pytest.approx(5e-4)
    assert isinstance(cfg["train"]["lr"], float)


def test_saved_config_round_trips(tmp_path):
    p = _write(tmp_path / "a.yaml", {"train": {"iterations": 9}})
    cfg = load_config(p, ["seed=5"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(tmp_path / "run" / "config.yaml")
    assert again == cfg


def test_invalid_yaml_and_non_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)


def test_every_shipped_config_parses():
    paths = [p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
             if "_base_" not in p.split(os.sep)]
    assert len(paths) >= 27 + 4, "expected the dataset x pair x method matrix, teachers and demo configs"
    for p in paths:
        cfg = load_config(p)
        if cfg["method"] != "baseline":
            assert cfg["teacher"]["name"], p
    # The paper recipe (DESIGN §5) on the main matrix.
    for ds in ("cityscapes", "voc", "ade20k"):
        for p in glob.glob(os.path.join(REPO, "configs", ds, "*.yaml")):
            cfg = load_config(p)
            t = cfg["train"]
            assert (t["batch_size"] * t["accumulate"], t["iterations"], t["lr"], t["momentum"],
                    t["weight_decay"], t["poly_power"]) == (8, 40000, 0.01, 0.9, 5e-4, 0.9), p
            assert cfg["data"]["name"] == ds, p


def test_unknown_distillation_key_is_named_at_load_time(tmp_path):
    p = _write(tmp_path / "a.yaml", {"method": "sstkd", "teacher": {"name": "pspnet_resnet101"}})
    with pytest.raises(ConfigError, match="lambda_strr"):
        load_config(p, ["distill.loss.lambda_strr=1"])
    cfg = load_config(p, ["distill.loss.lambda_str=0.5"])
    assert cfg.distill.loss == SSTKDConfig.preset("sstkd", lambda_str=0.5)


def test_flavor_and_format_choices_match_the_models():
    """The config's Literal choices are the models' flavors and checkpoint formats, no more, no less."""
    import typing

    from sstkd.engine import config as config_lib
    from sstkd.models.convert import FORMATS
    from sstkd.models.flavors import FLAVORS

    assert set(typing.get_args(config_lib.Flavor)) == set(FLAVORS)
    assert set(typing.get_args(config_lib.CheckpointFormat)) == {"auto", *FORMATS}
    with pytest.raises(config_lib.ConfigError, match="model.flavor"):
        config_lib.resolve_config({"model": {"flavor": "bogus"}})
