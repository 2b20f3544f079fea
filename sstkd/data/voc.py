"""Pascal VOC 2012 segmentation, optionally with the SBD augmented training set (10,582 images)."""
from __future__ import annotations

import os

import numpy as np

from sstkd.data.common import SegmentationDataset, require_dir

__all__ = ["PascalVOC", "VOC_CLASSES"]

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")

_LAYOUT = """  ROOT/VOCdevkit/VOC2012/JPEGImages/{id}.jpg
  ROOT/VOCdevkit/VOC2012/SegmentationClass/{id}.png            (palette PNG, 255 = boundary)
  ROOT/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
  with aug=True (SBD):
  ROOT/VOCdevkit/VOC2012/SegmentationClassAug/{id}.png
  ROOT/VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt"""


def _voc_dir(root: str) -> str:
    """Accept ROOT, ROOT/VOCdevkit or ROOT/VOCdevkit/VOC2012 itself."""
    for cand in (os.path.join(root, "VOCdevkit", "VOC2012"), os.path.join(root, "VOC2012"), root):
        if os.path.isdir(os.path.join(cand, "JPEGImages")):
            return cand
    require_dir(root, "root", _LAYOUT)
    raise FileNotFoundError(f"root: no VOC2012 directory (with JPEGImages/) under {root!r}. "
                            f"Expected layout:\n{_LAYOUT}")


class PascalVOC(SegmentationDataset):
    """Pascal VOC 2012, 21 classes (background + 20), boundary pixels 255 ignored.

    Args:
        root: directory holding ``VOCdevkit/VOC2012`` (or that directory itself).
        split: ``"train"``, ``"val"``, ``"trainval"`` or ``"train_aug"``
            (same as ``"train"`` with ``aug=True``).
        aug: train on the SBD-augmented list ``train_aug.txt`` with labels
            from ``SegmentationClassAug`` (the ``val`` split always uses the
            official ``SegmentationClass`` labels).

    Labels are palette PNGs, read as their indices; values outside 0..20 and 255 are an error.

    Raises:
        FileNotFoundError: missing root, list file, image or label (named, with the layout).
        ValueError: unknown split, empty list, invalid label values.
    """

    num_classes = 21
    class_names = VOC_CLASSES
    layout = _LAYOUT

    def __init__(self, root, split: str = "train", transforms=None, aug: bool = False, aug_seed: int | None = None):
        super().__init__(root, split, transforms, aug_seed)
        self._check_split(split, ("train", "val", "trainval", "train_aug"))
        if split == "train_aug":
            split, aug = "train", True
        self.aug = bool(aug) and split == "train"
        base = _voc_dir(self.root)
        list_name = "train_aug.txt" if self.aug else f"{split}.txt"
        list_path = os.path.join(base, "ImageSets", "Segmentation", list_name)
        if not os.path.isfile(list_path):
            raise FileNotFoundError(f"split: list file not found: {list_path!r}. Expected layout:\n{_LAYOUT}")
        label_dir = os.path.join(base, "SegmentationClassAug" if self.aug else "SegmentationClass")
        require_dir(label_dir, "root", _LAYOUT)
        with open(list_path) as f:
            # SBD lists sometimes hold "JPEGImages/x.jpg SegmentationClassAug/x.png"; keep the id.
            ids = [os.path.splitext(os.path.basename(line.split()[0]))[0] for line in f if line.strip()]
        for image_id in ids:
            img = os.path.join(base, "JPEGImages", f"{image_id}.jpg")
            lbl = os.path.join(label_dir, f"{image_id}.png")
            for path, what in ((img, "image"), (lbl, "label")):
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"{what}: {path!r} listed in {list_path!r} does not exist. "
                                            f"Expected layout:\n{_LAYOUT}")
            self.samples.append((img, lbl))
        self._require_samples(os.path.relpath(list_path, self.root))

    def map_label(self, label: np.ndarray, path: str) -> np.ndarray:
        bad = (label > 20) & (label != 255)
        if bad.any():
            raise ValueError(f"label: {path!r} holds values {np.unique(label[bad])[:10].tolist()} outside 0..20 "
                             "and 255 (is it an RGB-colour label instead of a palette PNG?)")
        return label
