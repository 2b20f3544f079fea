"""Joint image + label transforms for semantic segmentation.

Every transform is called as ``t(image, label, generator=None)`` and returns
``(image, label)``. Inputs may be PIL images, numpy arrays (image ``HxWx3``
or ``HxW`` uint8, label ``HxW`` integers) or tensors; the first transform
converts them to the working form

* image: float32 tensor ``(3, H, W)`` with values in ``[0, 1]``,
* label: int64 tensor ``(H, W)``, 255 = ignore.

Randomness comes only from ``generator`` (a ``torch.Generator``; the global
torch RNG when ``None``), so a pipeline is deterministic given a seeded
generator, and DataLoader workers (seeded by torch per worker) stay
reproducible. :func:`seed_worker` also seeds ``random`` and ``numpy`` for
any third-party code in a worker.
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "Compose", "ToTensor", "RandomScale", "RandomCrop", "RandomHorizontalFlip",
    "PhotometricJitter", "Normalize", "build_transforms", "seed_worker", "to_tensor_pair",
]


def to_tensor_pair(image, label) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert an (image, label) pair to the working form (see module docstring).

    Raises:
        TypeError: unsupported types. ValueError: wrong ranks / channel counts or
            image and label of different spatial size.
    """
    if not isinstance(image, torch.Tensor):
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"image: expected HxWx3 (or HxW) pixels, got array of shape {arr.shape}")
        arr = arr[:, :, :3]
        scale = 255.0 if arr.dtype == np.uint8 else 1.0
        image = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(scale)
    elif image.dtype == torch.uint8:
        image = image.float().div_(255.0)
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image: expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"image: expected uint8 or floating pixels, got {image.dtype}")
    if not isinstance(label, torch.Tensor):
        label = torch.from_numpy(np.ascontiguousarray(np.asarray(label)).astype(np.int64))
    label = label.long()
    if label.dim() != 2:
        raise ValueError(f"label: expected an (H, W) map, got shape {tuple(label.shape)}")
    if tuple(label.shape) != tuple(image.shape[1:]):
        raise ValueError(f"label: size {tuple(label.shape)} differs from image size {tuple(image.shape[1:])}")
    return image, label


def _uniform(generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


class Compose:
    """Apply transforms in order, threading one generator through them."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, image, label, generator: torch.Generator | None = None):
        for t in self.transforms:
            image, label = t(image, label, generator=generator)
        return image, label

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class ToTensor:
    """PIL / numpy pair -> image float32 (3, H, W) in [0, 1], label int64 (H, W)."""

    def __call__(self, image, label, generator=None):
        return to_tensor_pair(image, label)

    def __repr__(self) -> str:
        return "ToTensor()"


class RandomScale:
    """Resize by a factor drawn uniformly from ``scale_range`` (image bilinear, label nearest)."""

    def __init__(self, scale_range: tuple[float, float] = (0.5, 2.0)):
        lo, hi = (float(s) for s in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range: expected 0 < min <= max, got {scale_range!r}")
        self.scale_range = (lo, hi)

    def __call__(self, image, label, generator=None):
        image, label = to_tensor_pair(image, label)
        s = _uniform(generator, *self.scale_range)
        h, w = label.shape
        size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
        if size == (h, w):
            return image, label
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                              antialias=s < 1)[0].clamp_(0, 1)
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        return image, label

    def __repr__(self) -> str:
        return f"RandomScale({self.scale_range})"


class RandomCrop:
    """Random ``crop_size`` crop; smaller inputs are padded bottom/right (image 0, label 255) first.

    ``cat_max_ratio < 1`` retries (up to 10 times) crops where one class
    covers more than that fraction of the labelled pixels (mmseg's rule).
    """

    def __init__(self, crop_size, ignore_index: int = IGNORE_INDEX, cat_max_ratio: float = 1.0):
        ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        if ch < 1 or cw < 1:
            raise ValueError(f"crop_size: must be positive, got {crop_size!r}")
        self.crop_size = (int(ch), int(cw))
        self.ignore_index = ignore_index
        self.cat_max_ratio = float(cat_max_ratio)

    def __call__(self, image, label, generator=None):
        image, label = to_tensor_pair(image, label)
        ch, cw = self.crop_size
        h, w = label.shape
        if h < ch or w < cw:
            ph, pw = max(ch - h, 0), max(cw - w, 0)
            image = F.pad(image, (0, pw, 0, ph), value=0.0)
            label = F.pad(label, (0, pw, 0, ph), value=self.ignore_index)
            h, w = label.shape
        for _ in range(10):
            top = int(torch.randint(0, h - ch + 1, (), generator=generator))
            left = int(torch.randint(0, w - cw + 1, (), generator=generator))
            crop = label[top:top + ch, left:left + cw]
            if self.cat_max_ratio >= 1.0:
                break
            counts = torch.bincount(crop[crop != self.ignore_index].flatten())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio:
                break
        return image[:, top:top + ch, left:left + cw], crop

    def __repr__(self) -> str:
        return f"RandomCrop({self.crop_size})"


class RandomHorizontalFlip:
    """Flip image and label left-right together with probability ``p``."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image, label, generator=None):
        image, label = to_tensor_pair(image, label)
        if float(torch.rand((), generator=generator)) < self.p:
            image, label = image.flip(-1), label.flip(-1)
        return image, label

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class PhotometricJitter:
    """Random brightness, contrast and saturation factors in ``[1 - x, 1 + x]``, in random order.

    Operates on the [0, 1] image (before normalization); the label is untouched.
    """

    def __init__(self, brightness: float = 0.25, contrast: float = 0.25, saturation: float = 0.25, p: float = 1.0):
        for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name}: must be in [0, 1), got {v}")
        self.brightness, self.contrast, self.saturation, self.p = brightness, contrast, saturation, p

    @staticmethod
    def _gray(image: torch.Tensor) -> torch.Tensor:
        return (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]

    def __call__(self, image, label, generator=None):
        image, label = to_tensor_pair(image, label)
        if float(torch.rand((), generator=generator)) >= self.p:
            return image, label
        order = torch.randperm(3, generator=generator).tolist()
        factors = [_uniform(generator, 1 - v, 1 + v) for v in (self.brightness, self.contrast, self.saturation)]
        for op in order:
            f = factors[op]
            if op == 0:
                image = image * f
            elif op == 1:
                image = (image - self._gray(image).mean()) * f + self._gray(image).mean()
            else:
                gray = self._gray(image)
                image = (image - gray) * f + gray
            image = image.clamp(0, 1)
        return image, label

    def __repr__(self) -> str:
        return f"PhotometricJitter({self.brightness}, {self.contrast}, {self.saturation})"


class Normalize:
    """``(image - mean) / std`` per channel (ImageNet statistics by default)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean/std: expected 3 values each and positive std, got {mean!r}, {std!r}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image, label, generator=None):
        image, label = to_tensor_pair(image, label)
        return (image - self.mean) / self.std, label

    def __repr__(self) -> str:
        return f"Normalize({self.mean.flatten().tolist()}, {self.std.flatten().tolist()})"


def build_transforms(train: bool, crop_size=512, scale_range: tuple[float, float] = (0.5, 2.0), flip: bool = True,
                     jitter: float | None = 0.25, mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD, ignore_index: int = IGNORE_INDEX,
                     cat_max_ratio: float = 1.0) -> Compose:
    """The standard pipeline.

    Training: RandomScale(scale_range) -> RandomCrop(crop_size, pad 0 / 255)
    -> RandomHorizontalFlip -> PhotometricJitter(jitter) -> Normalize.
    Evaluation: ToTensor -> Normalize (full-size images; the evaluator does
    whole or sliding-window inference). ``scale_range=None``, ``flip=False``
    or ``jitter=None``/0 drop that step; ``crop_size=None`` drops the crop.
    """
    steps: list = [ToTensor()]
    if train:
        if scale_range is not None:
            steps.append(RandomScale(scale_range))
        if crop_size is not None:
            steps.append(RandomCrop(crop_size, ignore_index=ignore_index, cat_max_ratio=cat_max_ratio))
        if flip:
            steps.append(RandomHorizontalFlip())
        if jitter:
            steps.append(PhotometricJitter(jitter, jitter, jitter))
    steps.append(Normalize(mean, std))
    return Compose(steps)


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=seed_worker)``: seed ``random`` and ``numpy`` from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
