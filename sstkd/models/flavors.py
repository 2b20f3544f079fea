"""Architecture flavors: the other segmentation-KD codebases' networks, by name.

A flavor fixes every architectural choice in which those codebases differ
from each other and from sstkd's own models (``flavor=None``), so that their
checkpoints load strictly and their students have the published sizes:

* ``ifvd`` (SKD / IFVD ``Res_pspnet``): deep stem, every block of a dilated stage at
  the full stage dilation, ceil-mode max-pool; PSP 128 (ResNet-18) / 512 (ResNet-50/101)
  with the pooled maps first, LeakyReLU(0.01) and ``align_corners=True`` pyramid upsampling.
* ``cirkd_v1`` / ``cirkd_v2`` (CIRKD 2022 / 2025, ResNetV1b): deep stem, the first
  dilated block at the previous dilation but a BasicBlock's conv2 at the stage dilation;
  torchvision-style ASPP 128 / 256 (v1) or 512 / 512 (v2), dropout 0.1 before the classifier.
* ``mmseg`` (mmsegmentation ``r*-d8``, ResNetV1c): 32-32-64 stem, the first dilated
  block at half dilation, a BasicBlock's conv2 never dilated; PSP 128 / 512 (input first)
  or mmseg's ASPP head (image pool first, one 3x3 bottleneck) 128 / 512.
* ``mmseg_b`` (the ``r*b-d8`` configs): ``mmseg`` with torchvision's 7x7 stem.
* ``torchvision`` (``segmentation.deeplabv3_resnet*``): 7x7 stem, ASPP 256.

CIRKD and SKD/IFVD upsample the output to the input size with
``align_corners=True`` (their evaluation scripts); the others with False. The auxiliary FCN head on stage 3
is ``C3 / 4`` wide everywhere except SKD/IFVD's ``dsn`` (``C3 / 2``, with a
bias on its 3x3 conv and LeakyReLU). SKD/IFVD's In-Place ABN is plain
BatchNorm once its weights are converted (``|w| + 1e-5``, done by
:mod:`sstkd.models.convert`), so no flavor needs a special norm layer.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Flavor", "FLAVORS", "resolve_flavor"]


@dataclass(frozen=True)
class Flavor:
    """One codebase's architecture conventions (see the module docstring).

    Widths are for ``base_width=64``; ``build_model`` scales them with it.
    ``psp_width`` / ``aspp_width``: ``{"basic": R18 width, "bottleneck": R50/101 width}``;
    ``None`` = the codebase has no such model.
    """

    name: str
    stem: str                      # "torchvision" | "deep" | "v1c" (see sstkd.models.resnet.STEMS)
    dilation_rule: str             # a key of sstkd.models.resnet.DILATION_RULES
    ceil_mode: bool                # stem max-pool rounds up
    psp_width: dict | None
    aspp_width: dict | None
    aspp_head: str = "torchvision"  # "torchvision" (ASPP + project + 3x3 conv) | "mmseg" (one 3x3 bottleneck)
    psp_input_first: bool = True   # PSP concat [x, pools] (mmseg) or [pools, x] (IFVD)
    head_activation: str = "relu"  # PSP stages/bottleneck and aux head: "relu" | "leaky_relu"
    pyramid_align_corners: bool = False
    head_dropout: float = 0.0      # DeepLabV3: dropout before the classifier (CIRKD 0.1)
    aux_divisor: int = 4           # aux head width = C3 / aux_divisor
    aux_bias: bool = False         # bias on the aux head's 3x3 conv
    align_corners: bool = False    # upsampling of the outputs to the input size
    source: str = ""


FLAVORS: dict[str, Flavor] = {
    "ifvd": Flavor("ifvd", stem="deep", dilation_rule="ifvd", ceil_mode=True,
                   psp_width={"basic": 128, "bottleneck": 512}, aspp_width=None, psp_input_first=False,
                   head_activation="leaky_relu", pyramid_align_corners=True, aux_divisor=2, aux_bias=True,
                   align_corners=True, source="SKD / IFVD networks/pspnet.py Res_pspnet"),
    "cirkd_v1": Flavor("cirkd_v1", stem="deep", dilation_rule="cirkd", ceil_mode=False, psp_width=None,
                       aspp_width={"basic": 128, "bottleneck": 256}, head_dropout=0.1, align_corners=True,
                       source="CIRKD (2022) models/deeplabv3.py on ResNetV1b"),
    "cirkd_v2": Flavor("cirkd_v2", stem="deep", dilation_rule="cirkd", ceil_mode=False, psp_width=None,
                       aspp_width={"basic": 512, "bottleneck": 512}, head_dropout=0.1, align_corners=True,
                       source="CIRKD (2025) models/deeplabv3.py on ResNetV1b"),
    "mmseg": Flavor("mmseg", stem="v1c", dilation_rule="mmseg", ceil_mode=False,
                    psp_width={"basic": 128, "bottleneck": 512}, aspp_width={"basic": 128, "bottleneck": 512},
                    aspp_head="mmseg", source="mmsegmentation 1.x pspnet/deeplabv3 r*-d8 on ResNetV1c"),
    "mmseg_b": Flavor("mmseg_b", stem="torchvision", dilation_rule="mmseg", ceil_mode=False,
                      psp_width={"basic": 128, "bottleneck": 512}, aspp_width={"basic": 128, "bottleneck": 512},
                      aspp_head="mmseg", source="mmsegmentation 1.x pspnet/deeplabv3 r*b-d8 on ResNet"),
    "torchvision": Flavor("torchvision", stem="torchvision", dilation_rule="torchvision", ceil_mode=False,
                          psp_width=None, aspp_width={"basic": 256, "bottleneck": 256},
                          source="torchvision segmentation.deeplabv3_resnet*"),
}


def resolve_flavor(flavor) -> Flavor | None:
    """``None`` -> None (sstkd's own models), a name of :data:`FLAVORS` or a :class:`Flavor` -> the Flavor."""
    if flavor is None or isinstance(flavor, Flavor):
        return flavor
    if isinstance(flavor, str) and flavor in FLAVORS:
        return FLAVORS[flavor]
    raise ValueError(f"flavor: expected None or one of {', '.join(FLAVORS)}, got {flavor!r}")
