"""A small convolutional critic on segmentation score maps (for the WGAN-GP holistic loss)."""
from __future__ import annotations

import torch
from torch import nn

from sstkd.ops._checks import check_image, check_int


class ScoreMapDiscriminator(nn.Module):
    """Critic ``D: (B, K, H, W) score maps -> (B,) scores``.

    Four stride-2 4×4 convolutions with LeakyReLU(0.2) (widths ``w, 2w, 4w, 8w``)
    and a 3×3 conv to one channel, averaged over space. There is no
    normalization layer: the WGAN gradient penalty is defined per sample, and
    batch statistics would couple the samples (Gulrajani et al., 2017).

    Args:
        num_classes: ``K``, the channels of the score map.
        base_channels: ``w`` (default 64).

    Any spatial size ≥ 1 works (padding keeps every stage ≥ 1 pixel).
    """

    def __init__(self, num_classes: int, base_channels: int = 64):
        super().__init__()
        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        w = check_int(base_channels, "base_channels", minimum=1)
        layers: list[nn.Module] = []
        in_ch = num_classes
        for out_ch in (w, 2 * w, 4 * w, 8 * w):
            layers += [nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            in_ch = out_ch
        layers.append(nn.Conv2d(in_ch, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, score: torch.Tensor) -> torch.Tensor:
        check_image(score, "score")
        if score.shape[1] != self.num_classes:
            raise ValueError(f"score: expected {self.num_classes} channels (num_classes), got {score.shape[1]}")
        # Pad tiny maps so that every stride-2 stage keeps at least one pixel.
        h, w = score.shape[-2:]
        if min(h, w) < 16:
            ph, pw = max(0, 16 - h), max(0, 16 - w)
            score = nn.functional.pad(score, (0, pw, 0, ph), mode="replicate")
        return self.net(score).mean(dim=(1, 2, 3))
