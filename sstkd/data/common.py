"""Shared pieces of the file-based datasets: reading, validation, clear layout errors."""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from sstkd.data.transforms import IGNORE_INDEX, build_transforms

__all__ = ["SegmentationDataset", "read_image", "read_index_label", "require_dir", "sample_generator"]

_INDEX_MODES = ("P", "L", "I", "I;16", "I;16L", "I;16B")


def require_dir(path: str, what: str, layout: str) -> str:
    """Return ``path`` if it is a directory, else FileNotFoundError naming it and the expected layout."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what}: directory not found: {path!r}. Expected layout:\n{layout}")
    return path


def read_image(path: str) -> np.ndarray:
    """An RGB image as a uint8 ``H x W x 3`` array; ValueError naming the file if unreadable."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"image: cannot read {path!r}: {exc}") from exc


def read_index_label(path: str) -> np.ndarray:
    """A label map stored as class indices (palette ``P`` or grey ``L``/``I`` PNG) as an ``H x W`` array.

    A palette PNG is read as its indices, not its colours. RGB label files
    are rejected (they hold colours, not class indices).
    """
    try:
        with Image.open(path) as img:
            if img.mode not in _INDEX_MODES:
                raise ValueError(f"label: {path!r} has mode {img.mode!r}; expected a palette (P) or single-channel "
                                 "(L/I) PNG of class indices, not colours")
            return np.asarray(img).astype(np.int64)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"label: cannot read {path!r}: {exc}") from exc


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, index): the same sample always gets the same augmentation."""
    mixed = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF, int(index)]).generate_state(2)
    return torch.Generator().manual_seed(int(mixed[0]) << 32 | int(mixed[1]))


class SegmentationDataset(Dataset):
    """Base class: a list of (image path, label path) pairs plus a label mapping.

    ``__getitem__(i)`` -> ``(image float32 (3, H, W) normalized, label int64 (H, W))``
    with 255 = ignore. ``transforms`` is a joint transform
    ``t(image, label, generator=None)`` (default: ToTensor + ImageNet
    normalization). With ``aug_seed`` set, sample ``i`` in epoch ``e`` (see
    :meth:`set_epoch`) is augmented with a generator seeded from
    ``(aug_seed, e, i)`` -- independent of worker count and order, which is
    what exact resume needs; otherwise the torch global RNG is used.

    Subclasses set ``num_classes``, ``class_names``, ``layout`` and
    ``self.samples`` and implement :meth:`map_label`.
    """

    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    ignore_index: int = IGNORE_INDEX
    layout: str = ""

    def __init__(self, root, split: str, transforms: Callable | None = None, aug_seed: int | None = None):
        if root is None:
            raise ValueError(f"root: {type(self).__name__} needs a dataset root. Expected layout:\n{self.layout}")
        self.root = os.fspath(root)
        self.split = split
        self.transforms = build_transforms(train=False) if transforms is None else transforms
        self.aug_seed = aug_seed
        self.epoch = 0
        self.samples: list[tuple[str, str]] = []

    def _check_split(self, split: str, choices) -> None:
        if split not in choices:
            raise ValueError(f"split: {type(self).__name__} has splits {sorted(choices)}, got {split!r}")

    def _require_samples(self, pattern: str) -> None:
        if not self.samples:
            raise ValueError(f"split: {type(self).__name__} split {self.split!r} is empty: nothing matches "
                             f"{pattern!r}. Expected layout:\n{self.layout}")

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (only used with ``aug_seed``)."""
        self.epoch = int(epoch)

    def map_label(self, label: np.ndarray, path: str) -> np.ndarray:
        """Raw label file values -> training ids (255 = ignore)."""
        raise NotImplementedError

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed pair: image uint8 ``H x W x 3``, label uint8 ``H x W`` (training ids)."""
        img_path, lbl_path = self.samples[index]
        image = read_image(img_path)
        label = self.map_label(read_index_label(lbl_path), lbl_path)
        if image.shape[:2] != label.shape:
            raise ValueError(f"label: size {label.shape[1]}x{label.shape[0]} of {lbl_path!r} does not match image "
                             f"size {image.shape[1]}x{image.shape[0]} of {img_path!r}")
        return image, label.astype(np.uint8)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index: {index} out of range for {len(self)} samples")
        index = index % len(self)
        image, label = self.load_pair(index)
        gen = None if self.aug_seed is None else sample_generator(self.aug_seed, self.epoch, index)
        return self.transforms(image, label, generator=gen)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root!r}, split={self.split!r}, samples={len(self)})"
