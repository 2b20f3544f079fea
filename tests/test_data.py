"""Datasets (from tiny fake directory trees), the synthetic textures, and the joint transforms."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from sstkd.data import (
    ADE20K,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Cityscapes,
    Compose,
    Normalize,
    PascalVOC,
    PhotometricJitter,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    SyntheticTextures,
    ToTensor,
    build_dataset,
    build_transforms,
    seed_worker,
)


def _save_rgb(path, h, w, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _save_index(path, arr, palette=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if palette:
        img = img.convert("P")
        # VOC-like colour map: index i gets a colour unrelated to i, so reading colours would fail the test.
        pal = np.random.default_rng(1).integers(0, 256, 768, dtype=np.uint8)
        img.putpalette(pal.tolist())
        img.putdata(arr.astype(np.uint8).flatten().tolist())
    img.save(path)


def _unnormalize(x):
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x * std + mean


# ----------------------------------------------------------------------------- Cityscapes

# labelIds with their official trainIds (everything not listed -> 255).
CITY_IDS = np.array([[7, 8, 11, 12, 13, 17, 19, 20],
                     [21, 22, 23, 24, 25, 26, 27, 28],
                     [31, 32, 33, 0, 1, 6, 9, 34],
                     [4, 5, 10, 14, 15, 16, 18, 29]], dtype=np.uint8)
CITY_TRAIN = np.array([[0, 1, 2, 3, 4, 5, 6, 7],
                       [8, 9, 10, 11, 12, 13, 14, 15],
                       [16, 17, 18, 255, 255, 255, 255, 255],
                       [255] * 8], dtype=np.uint8)


def _cityscapes(root):
    for split, city, name in (("train", "aachen", "aachen_000000_000019"), ("train", "bremen", "bremen_000001_000019"),
                              ("val", "lindau", "lindau_000000_000019")):
        _save_rgb(os.path.join(root, "leftImg8bit", split, city, f"{name}_leftImg8bit.png"), 4, 8)
        _save_index(os.path.join(root, "gtFine", split, city, f"{name}_gtFine_labelIds.png"), CITY_IDS)
    return root


def test_cityscapes_label_mapping(tmp_path):
    ds = Cityscapes(_cityscapes(str(tmp_path)), "train")
    assert len(ds) == 2 and ds.num_classes == 19 and len(ds.class_names) == 19 and ds.ignore_index == 255
    image, label = ds[0]
    assert image.shape == (3, 4, 8) and image.dtype == torch.float32
    assert label.dtype == torch.int64
    np.testing.assert_array_equal(label.numpy(), CITY_TRAIN)
    assert len(Cityscapes(str(tmp_path), "val")) == 1


def test_cityscapes_prefers_label_train_ids(tmp_path):
    root = _cityscapes(str(tmp_path))
    train_ids = np.full((4, 8), 3, dtype=np.uint8)
    train_ids[0, 0] = 255
    _save_index(os.path.join(root, "gtFine", "train", "aachen", "aachen_000000_000019_gtFine_labelTrainIds.png"),
                train_ids)
    ds = Cityscapes(root, "train")
    np.testing.assert_array_equal(ds.load_pair(0)[1], train_ids)  # aachen: trainIds used as they are
    np.testing.assert_array_equal(ds.load_pair(1)[1], CITY_TRAIN)  # bremen: labelIds mapped


def test_cityscapes_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        Cityscapes(str(tmp_path / "missing"), "train")
    root = _cityscapes(str(tmp_path / "cs"))
    os.makedirs(os.path.join(root, "leftImg8bit", "test"))
    os.makedirs(os.path.join(root, "gtFine", "test"))
    with pytest.raises(ValueError, match="empty"):
        Cityscapes(root, "test")
    with pytest.raises(ValueError, match="split"):
        Cityscapes(root, "training")
    # an image without its label file
    _save_rgb(os.path.join(root, "leftImg8bit", "val", "lindau", "lindau_000001_000019_leftImg8bit.png"), 4, 8)
    with pytest.raises(FileNotFoundError, match="lindau_000001_000019_gtFine_labelIds.png"):
        Cityscapes(root, "val")


def test_mismatched_pair_is_named(tmp_path):
    root = _cityscapes(str(tmp_path))
    bad = os.path.join(root, "gtFine", "val", "lindau", "lindau_000000_000019_gtFine_labelIds.png")
    _save_index(bad, np.zeros((5, 8), dtype=np.uint8))
    ds = Cityscapes(root, "val")
    with pytest.raises(ValueError, match="lindau_000000_000019_gtFine_labelIds.png") as err:
        ds[0]
    assert "lindau_000000_000019_leftImg8bit.png" in str(err.value)
    # an unreadable image is named too
    with open(os.path.join(root, "leftImg8bit", "val", "lindau", "lindau_000000_000019_leftImg8bit.png"), "wb") as f:
        f.write(b"not a png")
    with pytest.raises(ValueError, match="leftImg8bit.png"):
        ds[0]


# ----------------------------------------------------------------------------- Pascal VOC

VOC_LABEL = np.array([[0, 0, 1, 1, 15, 15], [20, 20, 255, 255, 0, 7], [0, 1, 2, 3, 4, 5]], dtype=np.uint8)


def _voc(root, aug=False):
    base = os.path.join(root, "VOCdevkit", "VOC2012")
    seg = os.path.join(base, "ImageSets", "Segmentation")
    os.makedirs(seg, exist_ok=True)
    ids = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]}
    for split, names in ids.items():
        with open(os.path.join(seg, f"{split}.txt"), "w") as f:
            f.write("\n".join(names) + "\n")
        for n in names:
            _save_rgb(os.path.join(base, "JPEGImages", f"{n}.jpg"), 3, 6)
            _save_index(os.path.join(base, "SegmentationClass", f"{n}.png"), VOC_LABEL, palette=True)
    if aug:
        names = ["2007_000032", "2007_000039", "2008_000002"]
        with open(os.path.join(seg, "train_aug.txt"), "w") as f:
            f.write("\n".join(names) + "\n")
        _save_rgb(os.path.join(base, "JPEGImages", "2008_000002.jpg"), 3, 6)
        for n in names:
            _save_index(os.path.join(base, "SegmentationClassAug", f"{n}.png"), np.full((3, 6), 9, np.uint8))
    return root


def test_voc_palette_labels_read_as_indices(tmp_path):
    ds = PascalVOC(_voc(str(tmp_path)), "train")
    assert len(ds) == 2 and ds.num_classes == 21 and ds.class_names[0] == "background"
    with Image.open(ds.samples[0][1]) as img:
        assert img.mode == "P"
    image, label = ds[1]
    assert image.shape == (3, 3, 6)
    np.testing.assert_array_equal(label.numpy(), VOC_LABEL)  # 255 boundary kept as ignore
    assert len(build_dataset("voc", str(tmp_path), "val")) == 1
    # root may also point at VOC2012 itself
    assert len(PascalVOC(os.path.join(str(tmp_path), "VOCdevkit", "VOC2012"), "train")) == 2


def test_voc_sbd_aug(tmp_path):
    root = _voc(str(tmp_path), aug=True)
    ds = PascalVOC(root, "train", aug=True)
    assert len(ds) == 3 and all("SegmentationClassAug" in lbl for _, lbl in ds.samples)
    assert int(ds[2][1].unique()) == 9
    assert len(PascalVOC(root, "train_aug")) == 3
    assert len(PascalVOC(root, "val", aug=True)) == 1  # val keeps the official labels


def test_voc_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        PascalVOC(str(tmp_path / "nowhere"), "train")
    root = _voc(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train_aug.txt"):
        PascalVOC(root, "train", aug=True)
    base = os.path.join(root, "VOCdevkit", "VOC2012")
    open(os.path.join(base, "ImageSets", "Segmentation", "trainval.txt"), "w").close()
    with pytest.raises(ValueError, match="empty"):
        PascalVOC(root, "trainval")
    _save_index(os.path.join(base, "SegmentationClass", "2007_000033.png"), np.full((3, 6), 30, np.uint8))
    with pytest.raises(ValueError, match="2007_000033.png"):
        PascalVOC(root, "val")[0]
    Image.fromarray(np.zeros((3, 6, 3), np.uint8)).save(os.path.join(base, "SegmentationClass", "2007_000033.png"))
    with pytest.raises(ValueError, match="mode 'RGB'"):
        PascalVOC(root, "val")[0]
    os.remove(os.path.join(base, "JPEGImages", "2007_000033.jpg"))
    with pytest.raises(FileNotFoundError, match="2007_000033.jpg"):
        PascalVOC(root, "val")


# ----------------------------------------------------------------------------- ADE20K


def test_ade20k_reduce_zero_label(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    ann = np.array([[0, 1, 2, 150], [151, 255, 75, 0]], dtype=np.uint8)
    for sub, name in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        _save_rgb(str(base / "images" / sub / f"{name}.jpg"), 2, 4)
        _save_index(str(base / "annotations" / sub / f"{name}.png"), ann)
    ds = build_dataset("ade20k", str(tmp_path), "train")
    assert isinstance(ds, ADE20K) and ds.num_classes == 150 and len(ds.class_names) == 150
    np.testing.assert_array_equal(ds[0][1].numpy(), [[255, 0, 1, 149], [255, 255, 74, 255]])
    assert len(ADE20K(str(tmp_path), "val")) == 1
    os.remove(base / "annotations" / "validation" / "ADE_val_00000001.png")
    with pytest.raises(FileNotFoundError, match="ADE_val_00000001.png"):
        ADE20K(str(tmp_path), "validation")
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
        ADE20K(str(tmp_path / "missing"), "train")


def test_build_dataset_unknown_name():
    with pytest.raises(ValueError, match="cityscapes"):
        build_dataset("coco", "/tmp", "train")


# ----------------------------------------------------------------------------- synthetic textures


def test_synthetic_determinism():
    a = SyntheticTextures(8, 48, seed=3)
    b = SyntheticTextures(8, 48, seed=3)
    for i in (5, 0, 7):  # order of access does not matter
        ia, la = a.load_pair(i)
        ib, lb = b.load_pair(i)
        assert np.array_equal(ia, ib) and np.array_equal(la, lb)
    x1, y1 = a[2]
    x2, y2 = a[2]
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (3, 48, 48) and x1.dtype == torch.float32 and y1.dtype == torch.int64
    c = SyntheticTextures(8, 48, seed=4)
    assert not np.array_equal(a.load_pair(0)[0], c.load_pair(0)[0])
    v = SyntheticTextures(8, 48, seed=3, split="val")
    assert not np.array_equal(a.load_pair(0)[0], v.load_pair(0)[0])
    assert not np.array_equal(a.load_pair(0)[0], a.load_pair(1)[0])


def test_synthetic_independent_of_workers():
    ds = SyntheticTextures(6, 32, seed=1, transforms=build_transforms(True, crop_size=24), aug_seed=7)
    loader0 = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=0)
    loader2 = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, worker_init_fn=seed_worker)
    for (xa, ya), (xb, yb) in zip(loader0, loader2):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_synthetic_class_balance_and_sizes():
    ds = SyntheticTextures(64, 64, num_classes=8, seed=0)
    counts = np.zeros(8)
    for i in range(len(ds)):
        counts += np.bincount(ds.load_pair(i)[1].ravel(), minlength=8)
    frac = counts / counts.sum()
    assert frac.min() > 0.5 / 8 and frac.max() < 1.6 / 8, frac
    img, lbl = SyntheticTextures(2, (37, 53), num_classes=6).load_pair(1)
    assert img.shape == (37, 53, 3) and lbl.shape == (37, 53) and lbl.max() < 6
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticTextures(4, 32, num_classes=1)
    with pytest.raises(ValueError, match="size"):
        SyntheticTextures(4, 4)


def test_synthetic_colour_alone_cannot_separate_gratings():
    # grating_0 and grating_90 share mean intensity and contrast; only orientation tells them apart.
    ds = SyntheticTextures(40, 64, num_classes=8, seed=0, color_jitter=False)
    stats = {0: [], 1: []}
    for i in range(len(ds)):
        img, lbl = ds.load_pair(i)
        g = img[:, :, 0].astype(np.float64) / 255
        dx = np.abs(np.diff(g, axis=1))[:-1, :]
        dy = np.abs(np.diff(g, axis=0))[:, :-1]
        inner = lbl[:-1, :-1]
        for c in (0, 1):
            m = inner == c
            if m.sum() > 50:
                stats[c].append((g[:-1, :-1][m].mean(), g[:-1, :-1][m].std(), dx[m].mean(), dy[m].mean()))
    s0, s1 = np.mean(stats[0], axis=0), np.mean(stats[1], axis=0)
    assert abs(s0[0] - s1[0]) < 0.02 and abs(s0[1] - s1[1]) < 0.02  # same histogram statistics
    assert s0[2] > 2 * s0[3] and s1[3] > 2 * s1[2]  # theta=0 varies along x, theta=90 along y


# ----------------------------------------------------------------------------- transforms


def _pair(h=20, w=30):
    label = np.zeros((h, w), dtype=np.uint8)
    label[:, w // 2:] = 1
    label[h // 2:, :5] = 2
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[..., 0] = label * 100  # channel 0 encodes the label, to check alignment
    image[..., 1] = np.arange(w, dtype=np.uint8)[None] * 5
    return image, label


def test_transforms_deterministic_given_generator():
    t = build_transforms(True, crop_size=16, scale_range=(0.5, 2.0))
    image, label = _pair()
    outs = [t(image, label, generator=torch.Generator().manual_seed(11)) for _ in range(2)]
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    other = [t(image, label, generator=torch.Generator().manual_seed(s)) for s in range(6)]
    assert any(not torch.equal(o[0], outs[0][0]) for o in other)
    assert outs[0][0].shape == (3, 16, 16) and outs[0][1].shape == (16, 16)


def test_flip_flips_both():
    image, label = _pair()
    x, y = RandomHorizontalFlip(p=1.0)(image, label)
    x0, y0 = ToTensor()(image, label)
    assert torch.equal(x, x0.flip(-1)) and torch.equal(y, y0.flip(-1))
    x, y = RandomHorizontalFlip(p=0.0)(image, label)
    assert torch.equal(x, x0) and torch.equal(y, y0)


def test_crop_pads_image_zero_and_label_ignore():
    image, label = _pair(6, 8)
    x, y = RandomCrop((10, 12))(np.full((6, 8, 3), 200, np.uint8), label)
    assert x.shape == (3, 10, 12) and y.shape == (10, 12)
    assert (y[6:] == 255).all() and (y[:, 8:] == 255).all()
    assert (x[:, 6:] == 0).all() and (x[:, :, 8:] == 0).all()
    assert torch.equal(y[:6, :8], torch.from_numpy(label).long())


def test_scale_crop_flip_keep_alignment():
    image, label = _pair(40, 60)
    t = Compose([RandomScale((0.6, 1.7)), RandomCrop(32), RandomHorizontalFlip()])
    for seed in range(5):
        x, y = t(image, label, generator=torch.Generator().manual_seed(seed))
        valid = y != 255
        decoded = torch.round(x[0] * 255 / 100).long()
        agree = (decoded[valid] == y[valid]).float().mean()
        assert agree > 0.9, (seed, agree)  # only bilinear edge pixels may disagree
        assert set(y.unique().tolist()) <= {0, 1, 2, 255}  # nearest: no invented labels


def test_photometric_and_normalize():
    image, label = _pair()
    x, y = PhotometricJitter(0.4, 0.4, 0.4)(image, label, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, torch.from_numpy(label).long()) and x.min() >= 0 and x.max() <= 1
    x0, _ = ToTensor()(image, label)
    assert not torch.equal(x, x0)
    xn, _ = Normalize()(image, label)
    assert torch.allclose(_unnormalize(xn), x0, atol=1e-6)
    with pytest.raises(ValueError, match="label"):
        ToTensor()(image, label[:-1])
    with pytest.raises(ValueError, match="scale_range"):
        RandomScale((2.0, 1.0))


def test_seed_worker_seeds_numpy():
    torch.manual_seed(123)
    seed_worker(0)
    a = np.random.rand()
    torch.manual_seed(123)
    seed_worker(0)
    assert np.random.rand() == a
