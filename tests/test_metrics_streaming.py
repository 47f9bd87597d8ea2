"""Streamed (binned) pixel metrics agree with the exact ones."""

from __future__ import annotations

import numpy as np
import pytest

from defectlab.metrics import anomaly_metrics
from defectlab.metrics.streaming import PixelHistogram


def _images(seed: int) -> list[tuple[np.ndarray, np.ndarray, str]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(30):
        h, w = rng.integers(40, 90, 2)
        mask = np.zeros((h, w), bool)
        kind = "good" if i % 3 == 0 else ("a" if i % 3 == 1 else "b")
        amap = rng.gamma(2.0, 1.0, (h, w)) * (1 + i / 10)  # maps of growing range: the grid must widen
        if kind != "good":
            for _ in range(rng.integers(1, 3)):
                y, x, r = rng.integers(0, h), rng.integers(0, w), rng.integers(2, 8)
                yy, xx = np.ogrid[:h, :w]
                mask |= (yy - y) ** 2 + (xx - x) ** 2 <= r * r
            amap[mask] += rng.uniform(0.5, 3.0)
        out.append((mask, amap - 3.0 * (i == 7), kind))  # one map reaches below the first range too
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_streamed_pixel_metrics_match_exact(seed: int) -> None:
    images = _images(seed)
    acc = PixelHistogram()
    for mask, amap, kind in images:
        acc.add(mask, amap, kind)
    for groups in (None, ["a", "good"], ["b", "good"]):
        sel = [im for im in images if groups is None or im[2] in groups]
        labels = np.array([im[2] != "good" for im in sel])
        exact = anomaly_metrics(labels, labels.astype(float), [m for m, _, _ in sel], [a for _, a, _ in sel])
        got = acc.metrics(groups)
        for key in ("pixel_auroc", "pixel_aupro", "pixel_ap", "pixel_f1_max"):
            assert got[key] == pytest.approx(exact[key], abs=2e-3), key
        assert got["pixel_f1_threshold"] == pytest.approx(exact["pixel_f1_threshold"], rel=0.01, abs=0.01)
