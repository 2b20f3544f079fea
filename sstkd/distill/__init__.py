"""SSTKD distillation: feature taps, alignment, CDM (``L_str``), DTIEM (``L_sta``),
response (``L_pi``) and holistic (``L_ho``) losses, and the drop-in ``SSTKDLoss``.

See docs/method.md for the math and every default.
"""
from sstkd.distill.align import AlignHead  # noqa: F401
from sstkd.distill.cdm import ContourletDecompositionModule, pad_to_size  # noqa: F401
from sstkd.distill.discriminator import SAGANDiscriminator, ScoreMapDiscriminator, build_critic  # noqa: F401
from sstkd.distill.dtiem import DTIEM, clip_histogram, intensity_map, overflow, smooth_histogram  # noqa: F401
from sstkd.distill.holistic import critic_loss, discriminator_step, generator_loss, gradient_penalty  # noqa: F401
from sstkd.distill.protocols import PROTOCOLS, protocol_settings  # noqa: F401
from sstkd.distill.loss import PRESETS, SSTKDConfig, SSTKDLoss  # noqa: F401
from sstkd.distill.response import pixelwise_kd  # noqa: F401
from sstkd.distill.taps import FeatureTap  # noqa: F401

__all__ = [
    "AlignHead",
    "ContourletDecompositionModule",
    "DTIEM",
    "FeatureTap",
    "PRESETS",
    "PROTOCOLS",
    "SAGANDiscriminator",
    "SSTKDConfig",
    "SSTKDLoss",
    "ScoreMapDiscriminator",
    "build_critic",
    "clip_histogram",
    "critic_loss",
    "discriminator_step",
    "generator_loss",
    "gradient_penalty",
    "intensity_map",
    "overflow",
    "pad_to_size",
    "pixelwise_kd",
    "protocol_settings",
    "smooth_histogram",
]
