"""Anomaly-detection metrics: image/pixel AUROC, AUPRO, average precision, F1-max and thresholds.

Conventions, stated once:

* **Higher score = more anomalous.** Label 1/True = anomalous (defect), 0/False = good.
* A sample is *predicted anomalous at threshold t* when ``score >= t`` (scikit-learn's convention for
  its curves). The deployable threshold from :func:`threshold_from_good` is used as ``score > t``
  (see ``defectlab.anomaly.base.Prediction``); for continuous scores the two differ on a null set.
* Every curve is exact: the operating points are all distinct score values, ties are one point, as in
  ``sklearn.metrics.roc_curve`` / ``precision_recall_curve``. Nothing is binned. Counts are integers, so
  AUROC is exact up to one final division. AUROC sorts only the negatives (~2x the score array in
  memory); the curve-based metrics (AP, F1-max, AUPRO) sort positives and negatives separately with
  ``np.unique`` and keep int64 counts per distinct score (~10x the float32 score array at worst).
* **AUPRO** follows the MVTec AD definition (Bergmann et al., IJCV 2021, ``compute_pro``): regions are the
  connected components of each ground-truth mask with **8-connectivity**; at each threshold the PRO is the
  overlap ``|region ∩ {score >= t}| / |region|`` **averaged over all regions of all images**; the FPR is over
  all **good pixels** (every pixel outside the ground truth, in good and defective images alike). The PRO
  curve is integrated over FPR in ``[0, fpr_limit]`` (trapezoid, linear interpolation at the limit) and
  divided by ``fpr_limit`` (0.3), so a perfect map gets 1.0.

Inputs are numpy arrays, torch tensors or (for pixels) lists of per-image 2-D arrays of differing sizes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from defectlab.metrics._common import (
    MetricInputError,
    as_bool_labels,
    flat_pair,
    require_both_classes,
    to_numpy,
)

__all__ = [
    "auroc",
    "image_auroc",
    "pixel_auroc",
    "average_precision",
    "f1_max",
    "aupro",
    "pro_curve",
    "threshold_from_good",
    "background_auroc",
    "anomaly_metrics",
]

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_CHUNK = 1 << 20


def _counts_at_thresholds(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores in decreasing order and, for each, the integer counts (tp, fp) of ``score >= t``."""
    pos_vals, pos_counts = np.unique(scores[labels], return_counts=True)
    neg_vals, neg_counts = np.unique(scores[~labels], return_counts=True)
    thresholds = np.union1d(pos_vals, neg_vals)[::-1]
    pos_below = np.concatenate(([0], np.cumsum(pos_counts, dtype=np.int64)))  # count of values < u[i]
    neg_below = np.concatenate(([0], np.cumsum(neg_counts, dtype=np.int64)))
    tps = pos_below[-1] - pos_below[np.searchsorted(pos_vals, thresholds, side="left")]
    fps = neg_below[-1] - neg_below[np.searchsorted(neg_vals, thresholds, side="left")]
    return thresholds, tps, fps


def auroc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve, exact with ties (equals ``sklearn.metrics.roc_auc_score``)."""
    labels, scores = flat_pair(y_true, y_score)
    n_pos, n_neg = require_both_classes(labels, "AUROC")
    # Mann-Whitney U with ties counted half (= the trapezoidal ROC area that sklearn computes), in
    # integer arithmetic: 2U = sum over positives of (#neg < p) + (#neg <= p). Only the negatives are
    # sorted (one copy); positives go through in chunks, so memory stays ~2x the score array.
    neg = np.sort(scores[~labels])
    pos = scores[labels]
    twice_u = 0
    for start in range(0, pos.size, _CHUNK):
        chunk = pos[start : start + _CHUNK]
        twice_u += int(np.searchsorted(neg, chunk, side="left").sum(dtype=np.int64))
        twice_u += int(np.searchsorted(neg, chunk, side="right").sum(dtype=np.int64))
    return twice_u / (2.0 * n_pos * n_neg)


def image_auroc(labels: Any, scores: Any) -> float:
    """Image-level AUROC: one label (0 good / 1 defect) and one score per image."""
    return auroc(labels, scores)


def pixel_auroc(masks: Any, maps: Any) -> float:
    """Pixel-level AUROC over all pixels of all images (masks bool, maps float, same shapes)."""
    _check_pixel_shapes(masks, maps)
    return auroc(masks, maps)


def average_precision(y_true: Any, y_score: Any) -> float:
    """Average precision, ``sum_n (R_n - R_{n-1}) P_n`` (equals ``sklearn.metrics.average_precision_score``)."""
    labels, scores = flat_pair(y_true, y_score)
    n_pos, _ = require_both_classes(labels, "average precision")
    _, tps, fps = _counts_at_thresholds(labels, scores)
    precision = tps / (tps + fps)  # tps + fps >= 1 at every distinct score
    recall_steps = np.diff(np.concatenate(([0], tps))) / n_pos
    return float(np.sum(recall_steps * precision))


def f1_max(y_true: Any, y_score: Any) -> tuple[float, float]:
    """(best F1 over all thresholds, that threshold); defect when ``score >= threshold``.

    Ties in F1 go to the lowest threshold, as ``argmax`` over ``precision_recall_curve``'s ascending
    thresholds does. Works for image labels/scores and for pixel masks/maps (flattened) alike.
    """
    labels, scores = flat_pair(y_true, y_score)
    n_pos, _ = require_both_classes(labels, "F1-max")
    thresholds, tps, fps = _counts_at_thresholds(labels, scores)
    f1 = 2.0 * tps / (tps + fps + n_pos)  # 2TP / (2TP + FP + FN), FN = n_pos - TP
    best = np.flatnonzero(f1 == f1.max())[-1]  # thresholds decrease, so the last is the lowest
    return float(f1[best]), float(thresholds[best])


def threshold_from_good(scores: Any, quantile: float = 0.99) -> float:
    """A deployable threshold from (held-out) good images only: the ``quantile`` of their scores.

    Flag a new image as defective when ``score > threshold``; about ``1 - quantile`` of good images then
    raise a false alarm. Uses ``np.quantile`` with linear interpolation.
    """
    values = to_numpy(scores).astype(np.float64).reshape(-1)
    if values.size == 0:
        raise MetricInputError("threshold_from_good needs at least one good-image score")
    if not np.all(np.isfinite(values)):
        raise MetricInputError("good-image scores contain NaN or infinite values")
    if not 0.0 < quantile <= 1.0:
        raise MetricInputError(f"quantile must be in (0, 1], got {quantile}")
    return float(np.quantile(values, quantile))


def _check_pixel_shapes(masks: Any, maps: Any) -> None:
    if isinstance(masks, (list, tuple)) or isinstance(maps, (list, tuple)):
        masks, maps = list(masks), list(maps)
        if len(masks) != len(maps):
            raise MetricInputError(f"{len(masks)} masks but {len(maps)} anomaly maps")
        for i, (m, a) in enumerate(zip(masks, maps, strict=True)):
            if np.shape(to_numpy(m)) != np.shape(to_numpy(a)):
                raise MetricInputError(
                    f"image {i}: mask shape {np.shape(to_numpy(m))} != map shape {np.shape(to_numpy(a))}"
                )
    elif np.shape(to_numpy(masks)) != np.shape(to_numpy(maps)):
        raise MetricInputError(f"mask shape {np.shape(to_numpy(masks))} != map shape {np.shape(to_numpy(maps))}")


def _iter_images(masks: Any, maps: Any):
    _check_pixel_shapes(masks, maps)
    if isinstance(masks, (list, tuple)) or isinstance(maps, (list, tuple)):
        pairs = zip(list(masks), list(maps), strict=True)
    else:
        m, a = to_numpy(masks), to_numpy(maps)
        if m.ndim == 2:
            m, a = m[None], a[None]
        if m.ndim != 3:
            raise MetricInputError(f"masks must be (H, W) or (N, H, W), got shape {m.shape}")
        pairs = zip(m, a, strict=True)
    for m, a in pairs:
        m, a = to_numpy(m), to_numpy(a)
        if m.ndim != 2:
            raise MetricInputError(f"each mask must be 2-D (H, W), got shape {m.shape}")
        a = a if np.issubdtype(a.dtype, np.floating) else a.astype(np.float64)
        yield as_bool_labels(m), a


def pro_curve(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, pro, thresholds) at every distinct score, thresholds decreasing; MVTec AD definition.

    ``fpr[0] == pro[0] == 0`` is the added start point (threshold ``+inf``).
    """
    good_scores: list[np.ndarray] = []
    region_scores: list[np.ndarray] = []
    region_weights: list[np.ndarray] = []
    n_regions = 0
    for mask, amap in _iter_images(masks, maps):
        if not np.all(np.isfinite(amap)):
            raise MetricInputError("anomaly maps contain NaN or infinite values")
        good_scores.append(amap[~mask].ravel())
        if mask.any():
            regions, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
            ids = regions[mask]  # region id (1..count) of every defect pixel
            sizes = np.bincount(ids, minlength=count + 1)
            region_scores.append(amap[mask])
            region_weights.append(1.0 / sizes[ids])
            n_regions += count
    good = np.concatenate(good_scores) if good_scores else np.empty(0)
    if n_regions == 0:
        raise MetricInputError("AUPRO needs at least one anomalous region in the ground-truth masks")
    if good.size == 0:
        raise MetricInputError("AUPRO needs good pixels (outside the ground truth) for the false-positive rate")
    d_scores = np.concatenate(region_scores)
    d_weights = np.concatenate(region_weights)
    order = np.argsort(d_scores, kind="stable")  # defect pixels only: a small fraction of all pixels
    d_sorted = d_scores[order]
    w_below = np.concatenate(([0.0], np.cumsum(d_weights[order])))
    neg_vals, neg_counts = np.unique(good, return_counts=True)
    neg_below = np.concatenate(([0], np.cumsum(neg_counts, dtype=np.int64)))
    thresholds = np.union1d(np.unique(d_sorted), neg_vals)[::-1]
    fps = neg_below[-1] - neg_below[np.searchsorted(neg_vals, thresholds, side="left")]
    pro = (w_below[-1] - w_below[np.searchsorted(d_sorted, thresholds, side="left")]) / n_regions
    fpr = np.concatenate(([0.0], fps / good.size))
    pro = np.clip(np.concatenate(([0.0], pro)), 0.0, 1.0)
    return fpr, pro, np.concatenate(([np.inf], thresholds))


def _partial_area(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under (x, y) for x in [0, limit]; x non-decreasing, y interpolated at the limit."""
    inside = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:inside], y[:inside]
    area = float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1])) / 2.0)
    if inside < x.size and x[inside - 1] < limit:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += (limit - x0) * (y0 + y_lim) / 2.0
    return area


def aupro(masks: Any, maps: Any, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by it (1.0 = perfect)."""
    if not 0.0 < fpr_limit <= 1.0:
        raise MetricInputError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro, _ = pro_curve(masks, maps)
    return _partial_area(fpr, pro, fpr_limit) / fpr_limit


def background_auroc(labels: Any, masks: Any, maps: Any) -> float:
    """A check of the test set, not of the detector: image AUROC of each image's **median map score outside
    its ground truth** (the whole map for good images).

    How well the defect-free area of the defective images alone tells them from the good images. Two things
    raise it: the detector spreading a defect's score over its surroundings (receptive field, smoothing:
    large defects on small images reach 1.0 this way, e.g. the synthetic demo set), and a test set whose
    defective images differ from the good ones beyond their annotated defects (good test images that are
    near-copies of training images, such as the same parts photographed again; defective parts from
    another batch or setup; unannotated defects). The second inflates the image AUROC; compare the value
    between splits of the same data (magnetic_tile: 0.98 on its folders, 0.80 split by tile). Defective
    images whose mask covers everything are left out (NaN when no defective or no good image is left).
    """
    y = as_bool_labels(to_numpy(labels)).ravel()
    medians = np.array([np.median(a[~m]) if (~m).any() else np.nan for m, a in _iter_images(masks, maps)])
    if len(medians) != len(y):
        raise MetricInputError(f"{len(y)} labels but {len(medians)} masks/maps")
    k = ~np.isnan(medians)
    if y[k].all() or not y[k].any():
        return float("nan")
    return auroc(y[k], medians[k])


def anomaly_metrics(
    labels: Any,
    scores: Any,
    masks: Any | None = None,
    maps: Any | None = None,
    *,
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """All the standard numbers at once; pixel metrics (and the test-set check :func:`background_auroc`)
    only when ``masks`` and ``maps`` are given."""
    f1, thr = f1_max(labels, scores)
    out = {
        "image_auroc": image_auroc(labels, scores),
        "image_ap": average_precision(labels, scores),
        "image_f1_max": f1,
        "image_f1_threshold": thr,
    }
    if masks is not None and maps is not None:
        pf1, pthr = f1_max(masks, maps)
        out.update(
            pixel_auroc=pixel_auroc(masks, maps),
            pixel_aupro=aupro(masks, maps, fpr_limit),
            pixel_ap=average_precision(masks, maps),
            pixel_f1_max=pf1,
            pixel_f1_threshold=pthr,
        )
        bg = background_auroc(labels, masks, maps)
        out["background_auroc"] = None if np.isnan(bg) else bg  # type: ignore[assignment]  # JSON has no NaN
    return out
