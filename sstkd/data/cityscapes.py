"""Cityscapes (fine annotations), 19 training classes."""
from __future__ import annotations

import glob
import os

import numpy as np

from sstkd.data.common import SegmentationDataset, require_dir

__all__ = ["Cityscapes", "LABEL_TO_TRAIN_ID", "CITYSCAPES_CLASSES"]

CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")

# Official cityscapesScripts table (labels.py): labelId -> trainId; every other id is ignored.
LABEL_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                     26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

_ID_LUT = np.full(256, 255, dtype=np.uint8)
for _label_id, _train_id in LABEL_TO_TRAIN_ID.items():
    _ID_LUT[_label_id] = _train_id
_TRAIN_ID_LUT = np.full(256, 255, dtype=np.uint8)
_TRAIN_ID_LUT[:19] = np.arange(19)

_LAYOUT = """  ROOT/leftImg8bit/{split}/{city}/{name}_leftImg8bit.png
  ROOT/gtFine/{split}/{city}/{name}_gtFine_labelIds.png      (or {name}_gtFine_labelTrainIds.png)"""


class Cityscapes(SegmentationDataset):
    """Cityscapes with fine labels.

    Args:
        root: directory holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transforms: joint transform (default: ToTensor + ImageNet normalization).
        aug_seed: per-sample augmentation seed (see :class:`SegmentationDataset`).

    Labels: ``*_gtFine_labelTrainIds.png`` is used when present, otherwise
    ``*_gtFine_labelIds.png`` is mapped to the 19 trainIds with the official
    table (:data:`LABEL_TO_TRAIN_ID`); everything else becomes 255.

    Raises:
        FileNotFoundError: missing root / split directory / label file (named, with the layout).
        ValueError: unknown split, or no images in the split.
    """

    num_classes = 19
    class_names = CITYSCAPES_CLASSES
    layout = _LAYOUT

    def __init__(self, root, split: str = "train", transforms=None, aug_seed: int | None = None):
        super().__init__(root, split, transforms, aug_seed)
        self._check_split(split, ("train", "val", "test"))
        require_dir(self.root, "root", _LAYOUT)
        img_dir = require_dir(os.path.join(self.root, "leftImg8bit", split), "root", _LAYOUT)
        lbl_dir = require_dir(os.path.join(self.root, "gtFine", split), "root", _LAYOUT)
        pattern = os.path.join(img_dir, "*", "*_leftImg8bit.png")
        self._train_id_files: set[str] = set()
        for img_path in sorted(glob.glob(pattern)):
            city = os.path.basename(os.path.dirname(img_path))
            stem = os.path.basename(img_path)[: -len("_leftImg8bit.png")]
            train_ids = os.path.join(lbl_dir, city, f"{stem}_gtFine_labelTrainIds.png")
            label_ids = os.path.join(lbl_dir, city, f"{stem}_gtFine_labelIds.png")
            if os.path.isfile(train_ids):
                self._train_id_files.add(train_ids)
                self.samples.append((img_path, train_ids))
            elif os.path.isfile(label_ids):
                self.samples.append((img_path, label_ids))
            else:
                raise FileNotFoundError(f"label: no label for image {img_path!r}; expected {label_ids!r} "
                                        f"(or {os.path.basename(train_ids)}). Layout:\n{_LAYOUT}")
        self._require_samples(os.path.relpath(pattern, self.root))

    def map_label(self, label: np.ndarray, path: str) -> np.ndarray:
        lut = _TRAIN_ID_LUT if path in self._train_id_files else _ID_LUT
        return lut[np.clip(label, 0, 255)]
