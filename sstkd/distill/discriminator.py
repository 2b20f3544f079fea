"""Critics for the holistic (adversarial) loss.

* :class:`ScoreMapDiscriminator` (``critic: "sstkd"``): a plain conv critic on softmax score maps.
* :class:`SAGANDiscriminator` (``critic: "sagan"``): the IFVD/SKD/CIRKD critic on raw logits —
  BatchNorm in front, spectral-normalized convs, two self-attention blocks, LeakyReLU(0.1).

Each class says what it takes in ``input_kind`` (``"softmax"`` or ``"logits"``); the holistic
losses (``sstkd.distill.holistic``) prepare its input accordingly.
"""
from __future__ import annotations

import torch
from torch import nn

from sstkd.ops._checks import check_image, check_int


CRITICS = ("sstkd", "sagan")


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

    input_kind = "softmax"

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


class SelfAttention(nn.Module):
    """SAGAN self-attention ``x + γ · V softmax(Qᵀ K)ᵀ`` over the ``N = H·W`` positions (γ starts at 0).

    ``(B, C, H, W) -> (B, C, H, W)``; queries and keys have ``C // 8`` channels (at least 1).
    """

    def __init__(self, channels: int):
        super().__init__()
        inner = max(1, channels // 8)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2)                                    # (B, C', N)
        k = self.key(x).flatten(2)                                      # (B, C', N)
        attention = torch.softmax(q.transpose(1, 2) @ k, dim=-1)        # (B, N, N): row i attends over j
        out = self.value(x).flatten(2) @ attention.transpose(1, 2)      # (B, C, N)
        return x + self.gamma * out.view(b, c, h, w)


class SAGANDiscriminator(nn.Module):
    """The IFVD/SKD critic ``D: (B, K, H, W) raw logits -> (B, 1, h, w) score map``.

    ``BatchNorm2d(K)`` on the logits (IFVD's ``preprocess_GAN_mode = 1``), then
    four spectral-normalized 4×4 stride-2 convs of widths ``w, 2w, 4w, 8w``, each
    followed by LeakyReLU(0.1), with a self-attention block after the third and
    after the fourth, and a plain 4×4 conv (no padding) to one channel. A
    512×512 crop at output stride 8 gives 64×64 logits and a 1×1 score map;
    the losses average the map (and the gradient penalty differentiates its
    sum), as IFVD does.

    Maps smaller than 64×64 are padded by replication after the BatchNorm
    (our addition, so that small inputs such as the CPU demo's work; a 64×64
    or larger map is not padded). Spectral normalization is
    ``torch.nn.utils.parametrizations.spectral_norm`` (one power iteration per
    training-mode forward).

    Args:
        num_classes: ``K``.
        base_channels: ``w`` (IFVD's ``adv_conv_dim``, default 64).
    """

    input_kind = "logits"
    min_size = 64

    def __init__(self, num_classes: int, base_channels: int = 64):
        super().__init__()
        from torch.nn.utils.parametrizations import spectral_norm

        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        w = check_int(base_channels, "base_channels", minimum=1)
        self.norm = nn.BatchNorm2d(num_classes)
        widths = (w, 2 * w, 4 * w, 8 * w)
        convs, in_ch = [], num_classes
        for out_ch in widths:
            convs.append(nn.Sequential(spectral_norm(nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1)),
                                       nn.LeakyReLU(0.1)))
            in_ch = out_ch
        self.l1, self.l2, self.l3, self.l4 = convs
        self.attn1 = SelfAttention(widths[2])
        self.attn2 = SelfAttention(widths[3])
        self.last = nn.Conv2d(widths[3], 1, 4)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        check_image(logits, "logits")
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits: expected {self.num_classes} channels (num_classes), got {logits.shape[1]}")
        x = self.norm(logits)
        h, w = x.shape[-2:]
        if min(h, w) < self.min_size:
            x = nn.functional.pad(x, (0, max(0, self.min_size - w), 0, max(0, self.min_size - h)), mode="replicate")
        x = self.l3(self.l2(self.l1(x)))
        x = self.attn2(self.l4(self.attn1(x)))
        return self.last(x)


def build_critic(kind: str, num_classes: int, base_channels: int = 64) -> nn.Module:
    """``"sstkd"`` -> :class:`ScoreMapDiscriminator`, ``"sagan"`` -> :class:`SAGANDiscriminator`."""
    if kind == "sstkd":
        return ScoreMapDiscriminator(num_classes, base_channels)
    if kind == "sagan":
        return SAGANDiscriminator(num_classes, base_channels)
    raise ValueError(f"critic: unknown critic {kind!r}; choose from {CRITICS}")
