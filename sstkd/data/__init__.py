"""Segmentation datasets (Cityscapes, Pascal VOC (+SBD), ADE20K, synthetic textures) and joint transforms.

``build_dataset(name, root, split, transforms=None, **kw)`` -> a dataset whose
items are ``(image float32 (3, H, W) normalized, label int64 (H, W))`` with
255 = ignore, and which exposes ``num_classes``, ``class_names`` and
``ignore_index``.
"""
from __future__ import annotations

from sstkd.data.ade20k import ADE20K, ADE20K_CLASSES
from sstkd.data.cityscapes import CITYSCAPES_CLASSES, LABEL_TO_TRAIN_ID, Cityscapes
from sstkd.data.common import SegmentationDataset, sample_generator
from sstkd.data.synthetic import TEXTURE_CLASSES, SyntheticTextures, TextureClass
from sstkd.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    Normalize,
    PhotometricJitter,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    ToTensor,
    build_transforms,
    seed_worker,
)
from sstkd.data.voc import VOC_CLASSES, PascalVOC

DATASETS = {
    "cityscapes": Cityscapes,
    "voc": PascalVOC,
    "pascal_voc": PascalVOC,
    "ade20k": ADE20K,
    "synthetic": SyntheticTextures,
}


def build_dataset(name: str, root, split: str, transforms=None, **kw):
    """Build a dataset by name (``cityscapes``, ``voc``/``pascal_voc``, ``ade20k``, ``synthetic``).

    ``root`` is ignored by ``synthetic`` (may be ``None``); extra keyword
    arguments go to the class (e.g. ``aug=True`` for VOC, ``num_images`` /
    ``size`` / ``num_classes`` / ``seed`` for synthetic, ``aug_seed`` for all).

    Raises:
        ValueError: unknown name (lists the choices); errors of the dataset class.
    """
    key = str(name).lower()
    if key not in DATASETS:
        raise ValueError(f"name: unknown dataset {name!r}; choices: {', '.join(sorted(DATASETS))}")
    return DATASETS[key](root=root, split=split, transforms=transforms, **kw)


__all__ = [
    "DATASETS", "build_dataset",
    "ADE20K", "Cityscapes", "PascalVOC", "SyntheticTextures", "SegmentationDataset", "TextureClass",
    "ADE20K_CLASSES", "CITYSCAPES_CLASSES", "VOC_CLASSES", "TEXTURE_CLASSES", "LABEL_TO_TRAIN_ID",
    "IMAGENET_MEAN", "IMAGENET_STD", "Compose", "Normalize", "PhotometricJitter", "RandomCrop",
    "RandomHorizontalFlip", "RandomScale", "ToTensor", "build_transforms", "seed_worker", "sample_generator",
]
