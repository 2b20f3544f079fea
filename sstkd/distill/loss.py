"""``SSTKDConfig`` and ``SSTKDLoss``: the drop-in distillation criterion.

``L = L_ce + λ_pi·L_pi + λ_adv·L_ho + λ_str·L_str + λ_sta·L_sta``; the trainer
adds ``L_ce``, ``SSTKDLoss`` computes the rest. See docs/method.md.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from sstkd.distill.align import ALIGN_MODES, AlignHead
from sstkd.distill.cdm import PAD_MODES, ContourletDecompositionModule
from sstkd.distill.discriminator import ScoreMapDiscriminator
from sstkd.distill.dtiem import DTIEM, INTENSITIES, KERNELS, REDISTRIBUTE
from sstkd.distill.holistic import discriminator_step as _discriminator_step
from sstkd.distill.holistic import generator_loss
from sstkd.distill.response import match_logits, pixelwise_kd
from sstkd.filters import DFB_FILTERS, check_pyramid_filter
from sstkd.models.sync import all_reduce_gradients
from sstkd.ops._checks import check_image, check_int
from sstkd.ops.contourlet import MAX_DFB_LEVELS
from sstkd.ops.dispatch import check_backend_name
from sstkd.ops.quantize import MAX_ITERS, MAX_LEVELS

PRESETS = ("sstkd", "kd", "stlnet_sta")


@dataclass
class SSTKDConfig:
    """Weights and switches of :class:`SSTKDLoss` (flat, so it maps 1:1 to a YAML block).

    Defaults are the ``"sstkd"`` preset; docs/method.md explains every key.
    """

    # which terms
    use_pi: bool = True
    use_ho: bool = True
    use_str: bool = True
    use_sta: bool = True
    # weights of the terms in the total
    lambda_pi: float = 10.0
    lambda_adv: float = 0.001
    lambda_str: float = 2.0
    lambda_sta: float = 0.1
    # response loss
    temperature: float = 1.0
    ignore_index: int = 255
    # alignment head and texture-op backend
    align: str = "auto"
    backend: str = "auto"
    # CDM (structural texture)
    str_nlevs: tuple[int, ...] = (3, 3)
    str_band_weights: tuple[float, ...] | None = None
    str_pad_mode: str = "symmetric"
    str_pfilt: str = "9-7"
    str_dfilt: str = "pkva"
    str_recompute: bool = True
    # DTIEM (statistical texture)
    sta_intensity: str = "cosine"
    sta_robust_range: bool = True
    sta_quantiles: tuple[float, float] = (0.01, 0.99)
    sta_levels: int = 128
    sta_iters: int = 3
    sta_kernel: str = "triangular"
    sta_clip: bool = True
    sta_tau: float = 4.0
    sta_redistribute: str = "iterate"
    sta_equalize: bool = True
    sta_shared_centers: bool = True
    sta_hist_bandwidth: float = 1.0 / 16
    sta_w_hist: float = 1.0
    sta_w_cdf: float = 10.0
    sta_w_map: float = 1.0
    sta_w_range: float = 1.0
    # holistic loss: critic and its optimizer
    lambda_d: float = 0.1
    gp_weight: float = 10.0
    d_lr: float = 4e-4
    d_betas: tuple[float, float] = (0.9, 0.99)
    d_channels: int = 64

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name.startswith("use_") or f.name in ("str_recompute", "sta_robust_range", "sta_clip",
                                                      "sta_equalize", "sta_shared_centers"):
                if not isinstance(v, bool):
                    raise TypeError(f"{f.name}: expected a bool, got {v!r}")
            elif f.name.startswith(("lambda_", "sta_w_")) or f.name in ("gp_weight", "sta_hist_bandwidth"):
                self._check_number(f.name, v, minimum=0.0)
        self._check_number("temperature", self.temperature, minimum=0.0, strict=True)
        self._check_number("d_lr", self.d_lr, minimum=0.0, strict=True)
        self._check_number("sta_tau", self.sta_tau, minimum=1.0)
        check_int(self.ignore_index, "ignore_index")
        check_int(self.sta_levels, "sta_levels", minimum=2, maximum=MAX_LEVELS)
        check_int(self.sta_iters, "sta_iters", minimum=0, maximum=MAX_ITERS)
        check_int(self.d_channels, "d_channels", minimum=1)
        if self.align not in ALIGN_MODES:
            raise ValueError(f"align: unknown mode {self.align!r}; choose from {ALIGN_MODES}")
        if self.str_pad_mode not in PAD_MODES:
            raise ValueError(f"str_pad_mode: unknown mode {self.str_pad_mode!r}; choose from {PAD_MODES}")
        for name, value, choices in (("sta_kernel", self.sta_kernel, KERNELS),
                                     ("sta_intensity", self.sta_intensity, INTENSITIES),
                                     ("sta_redistribute", self.sta_redistribute, REDISTRIBUTE),
                                     ("str_dfilt", self.str_dfilt, DFB_FILTERS)):
            if value not in choices:
                raise ValueError(f"{name}: unknown value {value!r}; choose from {choices}")
        check_backend_name(self.backend)
        check_pyramid_filter(self.str_pfilt, "str_pfilt")
        # YAML gives lists: store tuples so the config stays hashable and comparable.
        self.str_nlevs = self._int_tuple("str_nlevs", self.str_nlevs)
        if self.str_band_weights is not None:
            self.str_band_weights = self._float_tuple("str_band_weights", self.str_band_weights)
        self.sta_quantiles = self._float_tuple("sta_quantiles", self.sta_quantiles, length=2)
        lo, hi = self.sta_quantiles
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"sta_quantiles: expected (low, high) with 0 <= low < high <= 1, got {self.sta_quantiles}")
        self.d_betas = self._float_tuple("d_betas", self.d_betas, length=2)
        if not all(0.0 <= b < 1.0 for b in self.d_betas):
            raise ValueError(f"d_betas: Adam's betas must lie in [0, 1), got {self.d_betas}")

    @staticmethod
    def _check_number(name, v, minimum=None, strict=False):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name}: expected a number, got {v!r}")
        if not math.isfinite(v):
            raise ValueError(f"{name}: must be finite, got {v!r}")
        if minimum is not None and (v <= minimum if strict else v < minimum):
            raise ValueError(f"{name}: must be {'>' if strict else '>='} {minimum}, got {v}")

    @staticmethod
    def _int_tuple(name, v):
        if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)) or len(v) == 0:
            raise TypeError(f"{name}: expected a non-empty list of ints, got {v!r}")
        return tuple(check_int(x, name, minimum=0, maximum=MAX_DFB_LEVELS) for x in v)

    @classmethod
    def _float_tuple(cls, name, v, length=None):
        if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)):
            raise TypeError(f"{name}: expected a list of numbers, got {v!r}")
        if length is not None and len(v) != length:
            raise ValueError(f"{name}: expected {length} numbers, got {len(v)}")
        for x in v:
            cls._check_number(name, x)
        return tuple(float(x) for x in v)

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "SSTKDConfig":
        """Build from a plain mapping (e.g. a YAML block); unknown keys raise ``ValueError`` naming them.

        A ``preset`` key selects the starting point (default ``"sstkd"``); the
        other keys override it.
        """
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise TypeError(f"config: expected a mapping, got {type(d).__name__}")
        d = dict(d)
        name = d.pop("preset", "sstkd")
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in d if k not in valid)
        if unknown:
            raise ValueError(f"config: unknown key {unknown[0]!r} (unknown: {unknown}; valid keys: {sorted(valid)})")
        return cls.preset(name, **d)

    @classmethod
    def preset(cls, name: str, **overrides) -> "SSTKDConfig":
        """A named configuration, with ``overrides`` applied.

        * ``"sstkd"``: every term (pi, ho, str, sta); the defaults.
        * ``"kd"``: response + holistic only (the SKD/IFVD baseline).
        * ``"stlnet_sta"``: every term, with STLNet's QCO as the statistical
          branch: plain min/max range, ``"stlnet"`` encoding, no Lloyd steps,
          no clipping, no equalization, no histogram smoothing (``L_sta`` =
          histogram term on STLNet's raw histograms, plus the range term).
        """
        base: dict = {}
        if name == "kd":
            base = {"use_str": False, "use_sta": False}
        elif name == "stlnet_sta":
            base = {"sta_robust_range": False, "sta_kernel": "stlnet", "sta_iters": 0,
                    "sta_clip": False, "sta_equalize": False, "sta_hist_bandwidth": 0.0}
        elif name != "sstkd":
            raise ValueError(f"preset: unknown preset {name!r}; choose from {PRESETS}")
        valid = {f.name for f in dataclasses.fields(cls)}
        for k in overrides:
            if k not in valid:
                raise ValueError(f"config: unknown key {k!r}")
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        """Plain dict (lists for tuples), loadable by :meth:`from_dict` and ``yaml.safe_dump``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


class SSTKDLoss(nn.Module):
    """Structural and statistical texture knowledge distillation, as one loss module.

    Args:
        student_channels: channels of the student's low-level feature (tap).
        teacher_channels: channels of the teacher's low-level feature.
        num_classes: classes of the logits (the critic's input channels).
        config: an :class:`SSTKDConfig`, a mapping for :meth:`SSTKDConfig.from_dict`,
            or None (the defaults).

    Owns the alignment head (1×1 conv + BN, student → teacher channels), the
    CDM, the DTIEM and the critic. Put :meth:`student_side_parameters` into
    the student's optimizer and :meth:`discriminator_parameters` into
    :meth:`make_discriminator_optimizer`'s.

    ``forward(s_logits, t_logits, s_low=None, t_low=None, target=None)``:

    * ``s_logits (B, K, H_s, W_s)``, ``t_logits (B, K, H, W)``: logits (the
      student's are resized bilinearly to the teacher's size if they differ);
    * ``s_low (B, C_s, h, w)``, ``t_low (B, C_t, h, w)``: low-level features
      (needed when ``use_str`` or ``use_sta``); equal spatial size;
    * ``target (B, H_y, W_y)``: optional labels; ``ignore_index`` pixels are
      excluded from ``L_pi``.

    Every teacher input is detached. Returns a dict of float32 scalars: the
    unweighted terms that are on (``pi``, ``ho``, ``str``, ``sta`` and
    ``sta_hist``, ``sta_cdf``, ``sta_map``, ``sta_range``) and ``loss``, their weighted sum
    (no cross-entropy). The per-sub-band MSEs of the last call are kept in
    ``last_str_bands`` (detached, (K,)). Works under ``torch.autocast``: the
    texture terms compute in float32.
    """

    def __init__(self, student_channels: int, teacher_channels: int, num_classes: int,
                 config: SSTKDConfig | Mapping | None = None):
        super().__init__()
        if config is None or isinstance(config, Mapping):
            config = SSTKDConfig.from_dict(config)
        if not isinstance(config, SSTKDConfig):
            raise TypeError(f"config: expected an SSTKDConfig or a mapping, got {type(config).__name__}")
        self.config = c = config
        self.student_channels = check_int(student_channels, "student_channels", minimum=1)
        self.teacher_channels = check_int(teacher_channels, "teacher_channels", minimum=1)
        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        self.uses_features = c.use_str or c.use_sta
        self.align = AlignHead(student_channels, teacher_channels, c.align) if self.uses_features else None
        self.cdm = (ContourletDecompositionModule(c.str_nlevs, c.str_band_weights, c.str_pad_mode, c.str_pfilt,
                                                  c.str_dfilt, c.backend, c.str_recompute) if c.use_str else None)
        self.dtiem = (DTIEM(levels=c.sta_levels, iters=c.sta_iters, kernel=c.sta_kernel, intensity=c.sta_intensity,
                            robust_range=c.sta_robust_range, quantiles=c.sta_quantiles, clip=c.sta_clip,
                            tau=c.sta_tau, redistribute=c.sta_redistribute, equalize=c.sta_equalize,
                            shared_centers=c.sta_shared_centers, hist_bandwidth=c.sta_hist_bandwidth,
                            w_hist=c.sta_w_hist, w_cdf=c.sta_w_cdf,
                            w_map=c.sta_w_map, w_range=c.sta_w_range, backend=c.backend) if c.use_sta else None)
        self.discriminator = ScoreMapDiscriminator(num_classes, c.d_channels) if c.use_ho else None
        self.last_str_bands: torch.Tensor | None = None

    # ------------------------------------------------------------------ params
    def student_side_parameters(self) -> list[nn.Parameter]:
        """Parameters trained with the student (the alignment head); empty for identity alignment."""
        return list(self.align.parameters()) if self.align is not None else []

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """The critic's parameters (empty when ``use_ho`` is off)."""
        return list(self.discriminator.parameters()) if self.discriminator is not None else []

    def sync_student_side_grads(self) -> None:
        """Average the alignment head's gradients over ``torch.distributed`` ranks (no-op otherwise).

        Call between ``backward()`` and the student's ``optimizer.step()`` when
        this module is not wrapped in DDP (the student usually is, the loss is not).
        """
        all_reduce_gradients(self.student_side_parameters())

    def make_discriminator_optimizer(self) -> torch.optim.Optimizer | None:
        """``Adam(discriminator_parameters(), lr=d_lr, betas=d_betas)``; None when ``use_ho`` is off."""
        if self.discriminator is None:
            return None
        return torch.optim.Adam(self.discriminator.parameters(), lr=self.config.d_lr, betas=self.config.d_betas)

    # ----------------------------------------------------------------- forward
    def _check_inputs(self, s_logits, t_logits, s_low, t_low):
        check_image(s_logits, "s_logits")
        check_image(t_logits, "t_logits")
        for name, x in (("s_logits", s_logits), ("t_logits", t_logits)):
            if x.shape[1] != self.num_classes:
                raise ValueError(f"{name}: expected {self.num_classes} classes (num_classes), got {x.shape[1]}")
        match_logits(s_logits, t_logits)  # batch / device checks
        if not self.uses_features:
            return
        for name, x in (("s_low", s_low), ("t_low", t_low)):
            if x is None:
                raise ValueError(f"{name}: required when use_str or use_sta is on (the tapped low-level feature)")
            check_image(x, name)
            if x.shape[0] != t_logits.shape[0]:
                raise ValueError(f"{name}: batch size {x.shape[0]} differs from the logits' {t_logits.shape[0]}")
            if x.device != t_logits.device:
                raise ValueError(f"{name}: on device {x.device}, but t_logits is on {t_logits.device}")
        if s_low.shape[1] != self.student_channels:
            raise ValueError(
                f"s_low: expected {self.student_channels} channels (student_channels), got {s_low.shape[1]}"
            )
        if t_low.shape[1] != self.teacher_channels:
            raise ValueError(
                f"t_low: expected {self.teacher_channels} channels (teacher_channels), got {t_low.shape[1]}"
            )
        if s_low.shape[-2:] != t_low.shape[-2:]:
            raise ValueError(
                f"s_low: spatial size {tuple(s_low.shape[-2:])} differs from t_low's {tuple(t_low.shape[-2:])}; "
                "tap stages of the same stride"
            )

    def forward(self, s_logits: torch.Tensor, t_logits: torch.Tensor, s_low: torch.Tensor | None = None,
                t_low: torch.Tensor | None = None, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        c = self.config
        self._check_inputs(s_logits, t_logits, s_low, t_low)
        t_logits = t_logits.detach()
        out: dict[str, torch.Tensor] = {}
        loss = s_logits.new_zeros((), dtype=torch.float32)
        if c.use_pi:
            out["pi"] = pixelwise_kd(s_logits, t_logits, c.temperature, target, c.ignore_index)
            loss = loss + c.lambda_pi * out["pi"]
        if c.use_ho:
            out["ho"] = generator_loss(self.discriminator, s_logits, t_logits)
            loss = loss + c.lambda_adv * out["ho"]
        if self.uses_features:
            t_feat = t_low.detach().float()
            s_feat = self.align(s_low).float()
            if c.use_str:
                out["str"], bands = self.cdm(s_feat, t_feat)
                self.last_str_bands = bands.detach()
                loss = loss + c.lambda_str * out["str"]
            if c.use_sta:
                terms = self.dtiem(s_feat, t_feat)
                out.update(terms)
                loss = loss + c.lambda_sta * terms["sta"]
        out["loss"] = loss
        return out

    def discriminator_step(self, s_logits: torch.Tensor, t_logits: torch.Tensor,
                           optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """One critic update with ``λ_d · (D(p_s) − D(p_t) + λ_gp·GP)``; returns detached ``d_loss, wdist, gp``.

        Call it after the student's step, with the same logits (they are detached here).
        """
        if self.discriminator is None:
            raise RuntimeError("discriminator_step: use_ho is off, there is no discriminator")
        check_image(s_logits, "s_logits")
        check_image(t_logits, "t_logits")
        return _discriminator_step(self.discriminator, s_logits, t_logits, optimizer,
                                   gp_weight=self.config.gp_weight, loss_weight=self.config.lambda_d)

    def extra_repr(self) -> str:
        c = self.config
        on = [n for n, f in (("pi", c.use_pi), ("ho", c.use_ho), ("str", c.use_str), ("sta", c.use_sta)) if f]
        return f"student_channels={self.student_channels}, teacher_channels={self.teacher_channels}, " \
               f"num_classes={self.num_classes}, terms={on}"
