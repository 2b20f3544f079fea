"""Segmentation metrics from a dataset-level confusion matrix, and the evaluation loop.

IoU is computed from intersections and unions summed over the whole dataset
(not averaged per image), as in the Cityscapes / mmseg protocol. A class
that appears neither in the ground truth nor in the predictions has an
undefined IoU (NaN) and is left out of the mean.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import nn

from sstkd.engine.inference import predict

__all__ = ["SegMetrics", "ConfusionMatrix", "evaluate", "format_metrics_table"]


class SegMetrics:
    """Accumulates a ``(K, K)`` confusion matrix (rows: ground truth, columns: prediction).

    Args:
        num_classes: K (>= 1).
        ignore_index: label value excluded from every count (255).
        device: where the matrix lives (that of the first update by default).

    ``update(pred, target)``: ``pred`` is ``(B, H, W)`` class indices or
    ``(B, K, H, W)`` scores (arg-maxed); ``target`` ``(B, H, W)`` integer
    labels. Counted with one ``torch.bincount`` of ``K * gt + pred``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device=None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64,
                                     device=device if device is not None else "cpu")
        self._device_fixed = device is not None

    def reset(self) -> None:
        self.confusion.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        k = self.num_classes
        if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
            raise TypeError("pred, target: expected torch.Tensors")
        if pred.is_floating_point():
            if pred.dim() != 4 or pred.shape[1] != k:
                raise ValueError(f"pred: scores must be (B, {k}, H, W), got {tuple(pred.shape)}")
            pred = pred.argmax(dim=1)
        if target.is_floating_point():
            raise TypeError(f"target: expected integer labels, got {target.dtype}")
        if pred.shape != target.shape:
            raise ValueError(f"pred: shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        if not self._device_fixed:
            self.confusion = self.confusion.to(target.device)
            self._device_fixed = True
        pred = pred.to(self.confusion.device).long().flatten()
        target = target.to(self.confusion.device).long().flatten()
        valid = target != self.ignore_index
        pred, target = pred[valid], target[valid]
        if target.numel() == 0:
            return
        if int(target.min()) < 0 or int(target.max()) >= k:
            bad = target[(target < 0) | (target >= k)].unique()[:10].tolist()
            raise ValueError(f"target: labels {bad} outside 0..{k - 1} (and not ignore_index={self.ignore_index})")
        if int(pred.min()) < 0 or int(pred.max()) >= k:
            raise ValueError(f"pred: class indices outside 0..{k - 1}")
        self.confusion += torch.bincount(k * target + pred, minlength=k * k).view(k, k)

    def all_reduce(self) -> None:
        """Sum the matrix over all processes when ``torch.distributed`` is initialized (no-op otherwise)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.confusion, op=dist.ReduceOp.SUM)

    @property
    def intersection(self) -> torch.Tensor:
        return self.confusion.diagonal()

    @property
    def union(self) -> torch.Tensor:
        return self.confusion.sum(0) + self.confusion.sum(1) - self.confusion.diagonal()

    def compute(self) -> dict:
        """``dict(mIoU, IoU, acc, pixel_acc, mean_acc, intersection, union, pixels)`` as Python numbers.

        ``IoU``/``acc`` are per-class lists (NaN where undefined); ``mIoU`` and
        ``mean_acc`` are NaN-ignoring means (NaN if nothing was counted).
        """
        conf = self.confusion.double().cpu()
        inter = conf.diagonal()
        gt = conf.sum(1)
        union = conf.sum(0) + gt - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, math.nan))
        acc = torch.where(gt > 0, inter / gt.clamp(min=1), torch.full_like(inter, math.nan))
        total = conf.sum()

        def nanmean(t: torch.Tensor) -> float:
            t = t[~torch.isnan(t)]
            return float(t.mean()) if t.numel() else math.nan

        return {
            "mIoU": nanmean(iou),
            "IoU": iou.tolist(),
            "acc": acc.tolist(),
            "pixel_acc": float(inter.sum() / total) if total > 0 else math.nan,
            "mean_acc": nanmean(acc),
            "intersection": [int(v) for v in inter.tolist()],
            "union": [int(v) for v in union.tolist()],
            "pixels": int(total),
        }


ConfusionMatrix = SegMetrics


def _unpack(batch):
    if isinstance(batch, dict):
        return batch["image"], batch["label"]
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError("loader: each batch must be (images, labels) or a dict with 'image' and 'label'")


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, num_classes: int, mode: str = "whole", crop_size=None,
             stride=None, flip: bool = False, scales: Sequence[float] = (1.0,), device=None,
             ignore_index: int = 255, max_batches: int | None = None, amp_dtype: torch.dtype | None = None,
             progress: bool = False) -> dict:
    """Evaluate ``model`` over ``loader`` and return :meth:`SegMetrics.compute`'s dict.

    The model runs in eval mode (its training flag is restored afterwards);
    predictions come from :func:`sstkd.engine.inference.predict`. Under
    ``torch.distributed`` each process evaluates its own shard and the
    confusion matrices are summed across processes (note that a
    ``DistributedSampler`` repeats samples to even out the shards).

    Args:
        loader: yields ``(images (B, 3, H, W), labels (B, H, W))``.
        mode, crop_size, stride, flip, scales: see :func:`predict`.
        device: where to run (default: the model's device).
        max_batches: stop after this many batches.
        amp_dtype: run the forward under ``torch.autocast`` with this dtype.
        progress: show a tqdm bar (if tqdm is installed).

    Returns:
        ``dict(mIoU, IoU, acc, pixel_acc, mean_acc, intersection, union, pixels)``.
    """
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    metrics = SegMetrics(num_classes, ignore_index=ignore_index, device=device)
    was_training = model.training
    model.eval()
    iterator = loader
    if progress:
        try:
            from tqdm import tqdm

            iterator = tqdm(loader, desc="eval", leave=False)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            pass
    try:
        for i, batch in enumerate(iterator):
            if max_batches is not None and i >= max_batches:
                break
            images, labels = _unpack(batch)
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                probs = predict(model, images, mode=mode, crop_size=crop_size, stride=stride, flip=flip,
                                scales=scales)
            if probs.shape[1] != num_classes:
                raise ValueError(f"num_classes: the model predicts {probs.shape[1]} classes, expected {num_classes}")
            metrics.update(probs.argmax(dim=1), labels)
    finally:
        model.train(was_training)
    metrics.all_reduce()
    return metrics.compute()


def format_metrics_table(metrics: dict, class_names: Sequence[str] | None = None) -> str:
    """A plain-text per-class table (IoU and accuracy in %) with the summary lines."""
    iou, acc = metrics["IoU"], metrics["acc"]
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(iou))]
    if len(names) != len(iou):
        names = [str(i) for i in range(len(iou))]
    width = max([len("class")] + [len(n) for n in names])

    def pct(v: float) -> str:
        return "   n/a" if math.isnan(v) else f"{100 * v:6.2f}"

    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}", "-" * (width + 16)]
    lines += [f"{n:<{width}}  {pct(i)}  {pct(a)}" for n, i, a in zip(names, iou, acc)]
    lines.append("-" * (width + 16))
    lines.append(f"mIoU {pct(metrics['mIoU']).strip()}   pixel acc {pct(metrics['pixel_acc']).strip()}   "
                 f"mean acc {pct(metrics['mean_acc']).strip()}   pixels {metrics['pixels']}")
    return "\n".join(lines)
