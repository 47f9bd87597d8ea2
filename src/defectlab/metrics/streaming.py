"""Pixel metrics of many maps in bounded memory: pixel AUROC, AUPRO, AP and F1-max from histograms.

    >>> acc = PixelHistogram()
    >>> for mask, amap, kind in images:    # one image at a time, any sizes
    ...     acc.add(mask, amap, kind)
    >>> acc.metrics()                      # pixel_auroc, _aupro, _ap, _f1_max, _f1_threshold
    >>> acc.metrics(["crack", "good"])     # one defect type against the good images

The exact metrics (``defectlab.metrics.anomaly``) need every pixel score at once: for a few hundred maps at
their original size that is hundreds of MB of scores plus the sorting copies. Here each image is binned as it
arrives into ``bins`` equal-width bins (65,536 by default) over a range that grows as needed (when a score
falls outside it, pairs of bins merge and the range doubles: the resolution is always the range seen / bins).
Three arrays per group of images: good-pixel counts (outside the ground truth), defect-pixel counts, and
defect-pixel weights ``1 / |region|`` (8-connected regions, MVTec AD's per-region overlap). Memory is
``3 * bins`` numbers per group whatever the number of images. Curves use the bin edges as thresholds
(``score >= edge``), so a metric differs from the exact one only through pixels that share a bin with the
other class: below 1e-3 in practice (tests/test_metrics_streaming.py). Groups share one grid and sum, so a
run keeps one group per defect type and reports each type against the good images without a second pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from defectlab.metrics._common import MetricInputError, as_bool_labels, to_numpy
from defectlab.metrics.anomaly import EIGHT_CONNECTED, _partial_area

BINS = 1 << 16


class PixelHistogram:
    """Binned good/defect pixel scores of many (mask, map) pairs, kept per named group on one shared grid
    (e.g. one group per defect type); see the module docstring."""

    _ARRAYS = ("good", "defect", "region_weight")

    def __init__(self, bins: int = BINS) -> None:
        if bins < 2 or bins % 2:
            raise MetricInputError(f"bins must be an even number >= 2, got {bins}")
        self.bins = bins
        self.lo: float | None = None  # left edge of bin 0
        self.width = 0.0
        self.hist: dict[str, dict[str, np.ndarray]] = {}
        self.n_regions: dict[str, int] = {}

    # -- accumulation ---------------------------------------------------------------------------------
    def _cover(self, vmin: float, vmax: float) -> None:
        if self.lo is None:
            span = max(vmax - vmin, 1e-6 * max(1.0, abs(vmax)), 1e-12)
            self.lo, self.width = vmin, 2.0 * span / self.bins  # headroom: the first image is not the widest
        while vmax >= self.lo + self.width * self.bins:  # merge pairs into the left half, range doubles up
            self._merge(left=True)
        while vmin < self.lo:  # merge pairs into the right half, range doubles down
            self._merge(left=False)

    def _merge(self, *, left: bool) -> None:
        half = self.bins // 2
        for arrays in self.hist.values():
            for arr in arrays.values():
                merged = arr[0::2] + arr[1::2]
                arr[:] = 0
                if left:
                    arr[:half] = merged
                else:
                    arr[half:] = merged
        if not left:
            self.lo -= self.width * self.bins
        self.width *= 2.0

    def _index(self, values: np.ndarray) -> np.ndarray:
        idx = np.floor((values - self.lo) / self.width).astype(np.int64)
        return np.clip(idx, 0, self.bins - 1)

    def add(self, mask: Any, amap: Any, group: str = "all") -> None:
        """One image: ``mask`` (H, W) bool (defect pixels), ``amap`` (H, W) float, same shape."""
        m, a = as_bool_labels(to_numpy(mask)), to_numpy(amap).astype(np.float64, copy=False)
        if m.shape != a.shape or m.ndim != 2:
            raise MetricInputError(f"mask shape {m.shape} != map shape {a.shape} (both must be 2-D)")
        if not np.all(np.isfinite(a)):
            raise MetricInputError("anomaly maps contain NaN or infinite values")
        if group not in self.hist:
            self.hist[group] = {"good": np.zeros(self.bins, dtype=np.int64),
                                "defect": np.zeros(self.bins, dtype=np.int64),
                                "region_weight": np.zeros(self.bins, dtype=np.float64)}
            self.n_regions[group] = 0
        self._cover(float(a.min()), float(a.max()))
        h = self.hist[group]
        h["good"] += np.bincount(self._index(a[~m]), minlength=self.bins)
        if m.any():
            regions, count = ndimage.label(m, structure=EIGHT_CONNECTED)
            ids = regions[m]
            idx = self._index(a[m])
            h["defect"] += np.bincount(idx, minlength=self.bins)
            h["region_weight"] += np.bincount(idx, weights=1.0 / np.bincount(ids)[ids], minlength=self.bins)
            self.n_regions[group] += count

    # -- metrics --------------------------------------------------------------------------------------
    def metrics(self, groups: Any = None, fpr_limit: float = 0.3) -> dict[str, float]:
        """Pixel metrics over the images of ``groups`` (default: all groups)."""
        names = list(self.hist) if groups is None else [g for g in groups if g in self.hist]
        if not names:
            raise MetricInputError("pixel metrics need at least one image")
        good = sum(self.hist[g]["good"] for g in names)
        defect = sum(self.hist[g]["defect"] for g in names)
        weight = sum(self.hist[g]["region_weight"] for g in names)
        n_regions = sum(self.n_regions[g] for g in names)
        n_pos, n_neg = int(defect.sum()), int(good.sum())
        if n_pos == 0 or n_neg == 0:
            raise MetricInputError("pixel metrics need both defect and good pixels")
        # AUROC: (defect, good) pairs with the defect pixel in a higher bin, pairs in one bin count half
        good_below = np.concatenate(([0], np.cumsum(good)[:-1]))
        auroc = float((defect * (2 * good_below + good)).sum() / (2.0 * n_pos * n_neg))
        # curves at each bin's left edge (score >= edge), highest edge first
        edges = self.lo + np.arange(self.bins)[::-1] * self.width
        tp, fp, w = np.cumsum(defect[::-1]), np.cumsum(good[::-1]), np.cumsum(weight[::-1])
        keep = np.concatenate((np.diff(tp + fp) > 0, [True])) & ((tp + fp) > 0)  # distinct operating points
        edges, tp, fp, w = edges[keep], tp[keep], fp[keep], w[keep]
        precision = tp / (tp + fp)
        ap = float(np.sum(np.diff(np.concatenate(([0], tp))) / n_pos * precision))
        f1 = 2.0 * tp / (tp + fp + n_pos)
        best = int(np.flatnonzero(f1 == f1.max())[-1])
        out = {"pixel_auroc": auroc, "pixel_ap": ap, "pixel_f1_max": float(f1[best]),
               "pixel_f1_threshold": float(edges[best])}
        if n_regions:
            fpr = np.concatenate(([0.0], fp / n_neg))
            pro = np.clip(np.concatenate(([0.0], w / n_regions)), 0.0, 1.0)
            out["pixel_aupro"] = _partial_area(fpr, pro, fpr_limit) / fpr_limit
        return out


__all__ = ["BINS", "PixelHistogram"]
