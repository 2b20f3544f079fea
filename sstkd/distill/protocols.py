"""Loss settings of the field's distillation protocols, as plain dicts of ``SSTKDConfig`` keys.

``SSTKDConfig.from_dict({"protocol": "ifvd", ...})`` applies one on top of the
method's preset; keys given next to it override it. The model flavors, the
evaluation upsampling and the training recipe of each protocol live in
``configs/_base_/protocols/<name>.yaml``; docs/method.md says where every
number comes from.

* ``ifvd`` (= SKD's adversarial recipe; IFVD ``utils/criterion.py``, ``options.py``):
  KD = ``nn.KLDivLoss()`` (mean over B·K·H·W) × 10 at T = 1, over every pixel;
  SAGAN critic on raw logits (BatchNorm first), WGAN-GP, generator weight
  0.001, critic weight 0.1, GP 10, Adam 4e-4 (0.9, 0.99).
* ``cirkd`` (CIRKD ``losses/kd.py``, ``train_kd.py``): KD = KL ``batchmean``
  over the B·H·W pixel rows × 1 at T = 1, over every pixel; the same SAGAN
  critic with the hinge loss and no gradient penalty, weights 0.001 / 0.1,
  Adam 4e-4 (0.9, 0.99).
* ``mmseg``: mmsegmentation ships no distillation; this protocol sets the
  models, evaluation and schedule only, and the loss keeps sstkd's defaults.
"""
from __future__ import annotations

import copy

PROTOCOLS: dict[str, dict] = {
    "ifvd": {
        "pi_normalization": "element", "lambda_pi": 10.0, "temperature": 1.0, "pi_mask_ignored": False,
        "critic": "sagan", "adv_loss": "wgan-gp", "lambda_adv": 0.001, "lambda_d": 0.1, "gp_weight": 10.0,
        "d_lr": 4e-4, "d_betas": (0.9, 0.99), "d_channels": 64,
    },
    "cirkd": {
        "pi_normalization": "pixel", "lambda_pi": 1.0, "temperature": 1.0, "pi_mask_ignored": False,
        "critic": "sagan", "adv_loss": "hinge", "lambda_adv": 0.001, "lambda_d": 0.1,
        "d_lr": 4e-4, "d_betas": (0.9, 0.99), "d_channels": 64,
    },
    "mmseg": {},
}


def protocol_settings(name: str) -> dict:
    """A copy of the ``SSTKDConfig`` keys that protocol ``name`` sets."""
    if not isinstance(name, str) or name not in PROTOCOLS:
        raise ValueError(f"protocol: unknown protocol {name!r}; choose from {tuple(PROTOCOLS)}")
    return copy.deepcopy(PROTOCOLS[name])
