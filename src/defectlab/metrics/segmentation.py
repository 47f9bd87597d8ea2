"""Segmentation overlap metrics: IoU (Jaccard) and Dice, binary and per class.

Empty-mask conventions, stated once:

* **Binary, both prediction and target empty** (a good image predicted clean): IoU = Dice = ``empty``
  (default 1.0: nothing to find and nothing found is a perfect answer). Either one empty, the other not: 0.0.
* **Pooled vs per image**: ``per_image=False`` (default) sums intersections and unions over the whole
  batch/dataset first (one pooled ratio; empty images then weigh nothing); ``per_image=True`` averages
  the per-image ratios, with the convention above for images where both are empty.
* **Per class** (label maps, ``num_classes`` classes): counts are pooled over all pixels; a class absent
  from both prediction and target everywhere gets NaN and is left out of ``mean_iou`` / ``mean_dice``.
  Pixels equal to ``ignore_index`` in the target are left out of every count.

Predictions must already be hard (bool/0-1 or integer labels): pass ``threshold`` to binarise scores
(``score > threshold`` is foreground).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from defectlab.metrics._common import MetricInputError, as_bool_labels, to_numpy

__all__ = ["binary_iou", "binary_dice", "per_class_iou", "per_class_dice", "mean_iou", "mean_dice"]


def _binary_pair(pred: Any, target: Any, threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    p, t = to_numpy(pred), to_numpy(target)
    if p.shape != t.shape:
        raise MetricInputError(f"prediction shape {p.shape} != target shape {t.shape}")
    if p.size == 0:
        raise MetricInputError("empty masks given")
    if threshold is not None:
        p = p > threshold
    elif np.issubdtype(p.dtype, np.floating) and not np.isin(p, (0.0, 1.0)).all():
        raise MetricInputError("prediction holds scores, not a 0/1 mask: pass threshold= to binarise it")
    return as_bool_labels(p), as_bool_labels(t)


def _binary(pred: Any, target: Any, dice: bool, per_image: bool, empty: float, threshold: float | None) -> float:
    p, t = _binary_pair(pred, target, threshold)
    if per_image:
        if p.ndim < 3:
            p, t = p[None], t[None]
        axes = tuple(range(1, p.ndim))
    else:
        axes = None
    inter = np.sum(p & t, axis=axes, dtype=np.int64)
    if dice:
        denom = np.sum(p, axis=axes, dtype=np.int64) + np.sum(t, axis=axes, dtype=np.int64)
        num = 2 * inter
    else:
        denom = np.sum(p | t, axis=axes, dtype=np.int64)
        num = inter
    ratio = np.where(denom > 0, num / np.maximum(denom, 1), empty)
    return float(np.mean(ratio))


def binary_iou(
    pred: Any, target: Any, *, per_image: bool = False, empty: float = 1.0, threshold: float | None = None
) -> float:
    """|P ∩ T| / |P ∪ T| for (H, W) or (N, H, W) masks; see the module doc for empty masks."""
    return _binary(pred, target, False, per_image, empty, threshold)


def binary_dice(
    pred: Any, target: Any, *, per_image: bool = False, empty: float = 1.0, threshold: float | None = None
) -> float:
    """2 |P ∩ T| / (|P| + |T|) for (H, W) or (N, H, W) masks; see the module doc for empty masks."""
    return _binary(pred, target, True, per_image, empty, threshold)


def _class_counts(
    pred: Any, target: Any, num_classes: int, ignore_index: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p, t = to_numpy(pred).reshape(-1), to_numpy(target).reshape(-1)
    if p.shape != t.shape:
        raise MetricInputError(f"prediction and target differ in size: {p.size} vs {t.size}")
    if num_classes < 1:
        raise MetricInputError(f"num_classes must be >= 1, got {num_classes}")
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    for name, arr in (("prediction", p), ("target", t)):
        if arr.size and (not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_):
            raise MetricInputError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise MetricInputError(f"{name} has class ids outside [0, {num_classes})")
    p, t = p.astype(np.int64), t.astype(np.int64)
    cm = np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    inter = np.diag(cm).astype(np.float64)
    return inter, cm.sum(axis=0).astype(np.float64), cm.sum(axis=1).astype(np.float64)


def per_class_iou(pred: Any, target: Any, num_classes: int, *, ignore_index: int | None = None) -> np.ndarray:
    """(num_classes,) IoU per class from integer label maps; NaN for a class absent from both."""
    inter, n_pred, n_true = _class_counts(pred, target, num_classes, ignore_index)
    union = n_pred + n_true - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def per_class_dice(pred: Any, target: Any, num_classes: int, *, ignore_index: int | None = None) -> np.ndarray:
    """(num_classes,) Dice per class from integer label maps; NaN for a class absent from both."""
    inter, n_pred, n_true = _class_counts(pred, target, num_classes, ignore_index)
    denom = n_pred + n_true
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * inter / denom, np.nan)


def _nanmean(values: np.ndarray) -> float:
    if np.all(np.isnan(values)):
        raise MetricInputError("no class occurs in prediction or target: mean is undefined")
    return float(np.nanmean(values))


def mean_iou(pred: Any, target: Any, num_classes: int, *, ignore_index: int | None = None) -> float:
    return _nanmean(per_class_iou(pred, target, num_classes, ignore_index=ignore_index))


def mean_dice(pred: Any, target: Any, num_classes: int, *, ignore_index: int | None = None) -> float:
    return _nanmean(per_class_dice(pred, target, num_classes, ignore_index=ignore_index))
