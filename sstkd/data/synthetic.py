"""A download-free texture segmentation dataset, deterministic by seed.

Each image is a Voronoi partition into a few regions; each region is filled
with the texture of one class. Classes differ by

* **structural** texture: orientation and frequency of gratings, edge density
  (a fine mosaic), sparse dots;
* **statistical** texture: intensity level, contrast, noise level and
  histogram shape (Gaussian noise, bimodal dots, uniform mosaic).

Most classes share the mean intensity 0.5 and several differ *only* in
grating orientation or frequency, so colour alone cannot solve the task; a
per-image gain / offset / RGB tint ("colour jitter") makes absolute
intensity unreliable too. Gratings get a random phase and a small
orientation jitter per region. Texture scales are in pixels, so any image
size works; the number of regions grows with the image area.

Item ``i`` of a split depends only on ``(seed, split, i)`` (a numpy
``SeedSequence``), never on the worker or the order of access.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from sstkd.data.common import sample_generator
from sstkd.data.transforms import IGNORE_INDEX, build_transforms

__all__ = ["SyntheticTextures", "TextureClass", "TEXTURE_CLASSES"]


@dataclass(frozen=True)
class TextureClass:
    """One texture class. ``kind``: grating | noise | flat | mosaic | dots | smooth."""

    name: str
    kind: str
    mean: float = 0.5
    amplitude: float = 0.3  # grating / smooth contrast, mosaic half-range, dot brightness above background
    noise: float = 0.04  # per-pixel Gaussian noise std
    theta: float = 0.0  # grating orientation, degrees
    period: float = 6.0  # grating period or mosaic / smooth cell size, pixels


# Ordered so that any prefix mixes structural and statistical classes.
TEXTURE_CLASSES = (
    TextureClass("grating_0", "grating", theta=0.0),
    TextureClass("grating_90", "grating", theta=90.0),
    TextureClass("noise", "noise", noise=0.2),
    TextureClass("bright", "flat", mean=0.78, noise=0.03),
    TextureClass("grating_45", "grating", theta=45.0),
    TextureClass("mosaic", "mosaic", amplitude=0.3, period=3.0, noise=0.02),
    TextureClass("grating_0_coarse", "grating", theta=0.0, period=14.0),
    TextureClass("dots", "dots", mean=0.45, amplitude=0.45, noise=0.03),
    TextureClass("grating_135", "grating", theta=135.0),
    TextureClass("dark", "flat", mean=0.22, noise=0.03),
    TextureClass("smooth", "smooth", amplitude=0.25, period=16.0, noise=0.02),
)

_SPLITS = {"train": 0, "val": 1, "test": 2}


def _coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    return yy.astype(np.float64), xx.astype(np.float64)


def _render(cls: TextureClass, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """The class texture over the whole ``h x w`` canvas (values around [0, 1])."""
    if cls.kind == "grating":
        yy, xx = _coords(h, w)
        theta = np.deg2rad(cls.theta + rng.uniform(-7.0, 7.0))
        phase = rng.uniform(0, 2 * np.pi)
        base = cls.mean + cls.amplitude * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / cls.period
                                                 + phase)
    elif cls.kind in ("noise", "flat"):
        base = np.full((h, w), cls.mean)
    elif cls.kind == "mosaic":
        cell = max(1, int(cls.period))
        blocks = rng.uniform(cls.mean - cls.amplitude, cls.mean + cls.amplitude, (h // cell + 2, w // cell + 2))
        oy, ox = rng.integers(0, cell, 2)
        base = np.kron(blocks, np.ones((cell, cell)))[oy:oy + h, ox:ox + w]
    elif cls.kind == "dots":
        dots = rng.random((h // 2 + 1, w // 2 + 1)) < 0.12
        base = cls.mean + cls.amplitude * np.kron(dots, np.ones((2, 2)))[:h, :w]
    elif cls.kind == "smooth":
        gh, gw = int(np.ceil(h / cls.period)) + 2, int(np.ceil(w / cls.period)) + 2
        coarse = torch.from_numpy(rng.uniform(-1, 1, (1, 1, gh, gw)))
        up = F.interpolate(coarse, size=(int(gh * cls.period), int(gw * cls.period)), mode="bicubic",
                           align_corners=False)[0, 0].numpy()
        base = cls.mean + cls.amplitude * up[:h, :w]
    else:  # pragma: no cover - guarded by the class table
        raise ValueError(f"kind: unknown texture kind {cls.kind!r}")
    return base + rng.normal(0.0, cls.noise, (h, w))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class SyntheticTextures(Dataset):
    """Texture-region segmentation images generated on the fly.

    Args:
        num_images: dataset length (>= 1).
        size: image size, ``int`` or ``(H, W)`` (each >= 8).
        num_classes: 2..11 (the first ``num_classes`` of :data:`TEXTURE_CLASSES`); default 8.
        seed: base seed; item ``i`` depends only on ``(seed, split, i)``.
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint streams).
        regions: ``(min, max)`` Voronoi regions per 64x64 area.
        color_jitter: per-image gain, offset and RGB tint (default on).
        transforms: joint transform (default: ToTensor + ImageNet normalization).
        aug_seed: per-sample augmentation seed, as for the file datasets.

    ``__getitem__`` -> ``(image float32 (3, H, W) normalized, label int64 (H, W))``;
    :meth:`load_pair` gives the raw uint8 arrays.
    """

    ignore_index = IGNORE_INDEX

    def __init__(self, num_images: int = 512, size=64, num_classes: int = 8, seed: int = 0, split: str = "train",
                 regions: tuple[int, int] = (3, 6), color_jitter: bool = True, transforms: Callable | None = None,
                 aug_seed: int | None = None, root=None):
        del root  # accepted so build_dataset can treat every dataset alike
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images: must be a positive int, got {num_images!r}")
        sides = [size, size] if _is_int(size) else list(size) if isinstance(size, (list, tuple)) else None
        if sides is None or len(sides) != 2 or not all(_is_int(v) for v in sides):
            raise ValueError(f"size: expected an int or (height, width) ints, got {size!r}")
        h, w = sides
        if h < 8 or w < 8:
            raise ValueError(f"size: each side must be >= 8, got {size!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= len(
                TEXTURE_CLASSES):
            raise ValueError(f"num_classes: must be an int in 2..{len(TEXTURE_CLASSES)}, got {num_classes!r}")
        if split not in _SPLITS:
            raise ValueError(f"split: must be one of {sorted(_SPLITS)}, got {split!r}")
        if (not isinstance(regions, (list, tuple)) or len(regions) != 2
                or not all(_is_int(v) for v in regions)):
            raise ValueError(f"regions: expected (min, max) ints, got {regions!r}")
        lo, hi = regions
        if not 1 <= lo <= hi:
            raise ValueError(f"regions: expected 1 <= min <= max, got {regions!r}")
        self.num_images = num_images
        self.size = (int(h), int(w))
        self.num_classes = num_classes
        self.classes = TEXTURE_CLASSES[:num_classes]
        self.class_names = tuple(c.name for c in self.classes)
        self.seed = int(seed)
        self.split = split
        self.regions = (int(lo), int(hi))
        self.color_jitter = bool(color_jitter)
        self.transforms = build_transforms(train=False) if transforms is None else transforms
        self.aug_seed = aug_seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_images

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``index`` as (image uint8 ``H x W x 3``, label uint8 ``H x W``)."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"index: {index} out of range for {self.num_images} images")
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, _SPLITS[self.split], index])
        h, w = self.size
        area_scale = max(1.0, h * w / 64.0**2)
        k = max(2, int(round(rng.integers(self.regions[0], self.regions[1] + 1) * area_scale)))
        seeds = rng.uniform(0, 1, (k, 2)) * (h, w)
        yy, xx = _coords(h, w)
        dist = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
        cell = dist.argmin(axis=0)
        cell_class = rng.integers(0, self.num_classes, k)
        label = cell_class[cell].astype(np.uint8)
        gray = np.zeros((h, w))
        for c in range(k):
            mask = cell == c
            if mask.any():
                gray[mask] = _render(self.classes[cell_class[c]], h, w, rng)[mask]
        if self.color_jitter:
            gain, offset = rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1)
            tint = rng.uniform(0.85, 1.15, 3)
            rgb = (gain * gray + offset)[:, :, None] * tint
        else:
            rgb = np.repeat(gray[:, :, None], 3, axis=2)
        image = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return image, label

    def __getitem__(self, index: int):
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index: {index} out of range for {self.num_images} images")
        index %= self.num_images
        image, label = self.load_pair(index)
        gen = None if self.aug_seed is None else sample_generator(self.aug_seed, self.epoch, index)
        return self.transforms(image, label, generator=gen)

    def __repr__(self) -> str:
        return (f"SyntheticTextures(num_images={self.num_images}, size={self.size}, num_classes={self.num_classes}, "
                f"seed={self.seed}, split={self.split!r})")
