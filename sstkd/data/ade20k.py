"""ADE20K (SceneParsing, ``ADEChallengeData2016``), 150 classes with reduce-zero-label."""
from __future__ import annotations

import glob
import os

import numpy as np

from sstkd.data.common import SegmentationDataset, require_dir

__all__ = ["ADE20K", "ADE20K_CLASSES"]

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

# reduce-zero-label: 0 (other / unlabelled) -> 255, k -> k - 1 for the 150 classes.
_LUT = np.full(256, 255, dtype=np.uint8)
_LUT[1:151] = np.arange(150)

_LAYOUT = """  ROOT/ADEChallengeData2016/images/{training,validation}/{name}.jpg
  ROOT/ADEChallengeData2016/annotations/{training,validation}/{name}.png"""
_SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


class ADE20K(SegmentationDataset):
    """ADE20K SceneParsing (150 classes), labels reduced by one with 0 -> 255.

    Args:
        root: directory holding ``ADEChallengeData2016`` (or that directory itself).
        split: ``"train"``/``"training"`` or ``"val"``/``"validation"``.

    Raises:
        FileNotFoundError: missing root / split directory / annotation (named, with the layout).
        ValueError: unknown split, or no images in the split.
    """

    num_classes = 150
    class_names = ADE20K_CLASSES
    layout = _LAYOUT

    def __init__(self, root, split: str = "train", transforms=None, aug_seed: int | None = None):
        super().__init__(root, split, transforms, aug_seed)
        self._check_split(split, tuple(_SPLITS))
        require_dir(self.root, "root", _LAYOUT)
        base = os.path.join(self.root, "ADEChallengeData2016")
        if not os.path.isdir(base) and os.path.isdir(os.path.join(self.root, "images")):
            base = self.root
        sub = _SPLITS[split]
        img_dir = require_dir(os.path.join(base, "images", sub), "root", _LAYOUT)
        ann_dir = require_dir(os.path.join(base, "annotations", sub), "root", _LAYOUT)
        pattern = os.path.join(img_dir, "*")
        for img_path in sorted(glob.glob(pattern)):
            stem, ext = os.path.splitext(os.path.basename(img_path))
            if ext.lower() not in _IMAGE_EXTS:
                continue
            lbl_path = os.path.join(ann_dir, f"{stem}.png")
            if not os.path.isfile(lbl_path):
                raise FileNotFoundError(f"label: no annotation for image {img_path!r}; expected {lbl_path!r}. "
                                        f"Layout:\n{_LAYOUT}")
            self.samples.append((img_path, lbl_path))
        self._require_samples(os.path.relpath(pattern, self.root) + ".jpg")

    def map_label(self, label: np.ndarray, path: str) -> np.ndarray:
        return _LUT[np.clip(label, 0, 255)]
