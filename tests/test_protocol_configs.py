"""configs/_base_/protocols/*.yaml: each protocol sets flavors, loss conventions and recipe together."""
import glob
import inspect
import os
import warnings

import pytest
import yaml

from sstkd.distill import SSTKDConfig
from sstkd.engine.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOCOL_DIR = os.path.join(REPO, "configs", "_base_", "protocols")


def _experiment(tmp_path, protocol, method="kd", dataset="cityscapes"):
    path = tmp_path / f"{protocol}.yaml"
    path.write_text(yaml.safe_dump({"_base_": [
        os.path.join(REPO, "configs", "_base_", "datasets", f"{dataset}.yaml"),
        os.path.join(REPO, "configs", "_base_", "models", "pspnet_r18.yaml"),
        os.path.join(REPO, "configs", "_base_", "teachers", "pspnet_r101.yaml"),
        os.path.join(REPO, "configs", "_base_", "methods", f"{method}.yaml"),
        os.path.join(PROTOCOL_DIR, f"{protocol}.yaml")]}))
    return load_config(str(path))


@pytest.mark.parametrize("protocol,flavor,recipe,loss", [
    ("ifvd", "ifvd", ([512, 512], 8, 40000, 0.01, 5e-4), ("element", 10.0, "sagan", "wgan-gp")),
    ("cirkd", "cirkd_v1", ([512, 1024], 16, 40000, 0.02, 1e-4), ("pixel", 1.0, "sagan", "hinge")),
    ("mmseg", "mmseg", ([512, 1024], 8, 80000, 0.01, 5e-4), ("pixel", 10.0, "sstkd", "wgan-gp")),
])
def test_protocol_sets_flavors_recipe_and_loss_together(tmp_path, protocol, flavor, recipe, loss):
    cfg = _experiment(tmp_path, protocol)
    assert cfg["model"]["flavor"] == cfg["teacher"]["flavor"] == flavor
    t = cfg["train"]
    assert (cfg["data"]["crop_size"], t["batch_size"], t["iterations"], t["lr"], t["weight_decay"]) == recipe
    assert (t["momentum"], t["poly_power"], t["aux_weight"]) == (0.9, 0.9, 0.4)
    c = cfg.distill.loss
    assert (c.pi_normalization, c.lambda_pi, c.critic, c.adv_loss) == loss
    assert c.pi_mask_ignored == (protocol == "mmseg")


def test_flavor_defaults_to_null_and_paper_configs_use_the_ifvd_protocol():
    plain = load_config(os.path.join(REPO, "configs", "demo", "baseline.yaml"))
    assert plain["model"]["flavor"] is None and plain["teacher"]["flavor"] is None
    paths = [p for ds in ("cityscapes", "voc", "ade20k") for p in glob.glob(os.path.join(REPO, "configs", ds, "*.yaml"))]
    assert len(paths) == 33
    for p in paths:
        cfg = load_config(p)
        ifvd = SSTKDConfig.from_dict({"preset": "sstkd" if cfg.method == "baseline" else cfg.method,
                                      "protocol": "ifvd"})
        assert cfg.distill.loss == ifvd, p
        name = cfg["model"]["name"]
        expected = {"pspnet": "ifvd", "deeplabv3_resnet": "cirkd_v1", "deeplabv3_mobilenetv2": None}
        assert cfg["model"]["flavor"] == next(v for k, v in expected.items() if name.startswith(k)), p


def test_flavor_reaches_build_model_only_when_set():
    from sstkd.engine.config import ModelConfig
    from sstkd.engine.trainer import model_args_from_config
    from sstkd.models import build_model

    section = ModelConfig(name="pspnet_resnet18", base_width=8)
    assert "flavor" not in model_args_from_config(section, 4)     # null: never passed (old checkpoints keep loading)
    args = model_args_from_config(ModelConfig(name="pspnet_resnet18", base_width=8, flavor="ifvd"), 4)
    assert args["flavor"] == "ifvd"
    assert build_model(**args).head is not None


def test_bad_flavor_type_and_unknown_protocol_are_named(tmp_path):
    from sstkd.engine.config import ConfigError

    with pytest.raises(ConfigError, match="model.flavor"):
        load_config(os.path.join(REPO, "configs", "demo", "baseline.yaml"), ["model.flavor=3"])
    with pytest.raises(ConfigError, match="protocol"):
        load_config(os.path.join(REPO, "configs", "demo", "kd.yaml"), ["distill.loss.protocol=skd"])
