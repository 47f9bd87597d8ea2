"""Defect boxes from an anomaly map: the 8-connected regions above a threshold (numpy only).

Regions are found from the runs of each row (a run joins the runs of the row above that it touches,
diagonals included), so the cost follows the number of runs, not of pixels. Boxes come largest region
first, ties in scan order of the regions' first pixels (``scipy.ndimage.label`` order; a test compares).
"""

from __future__ import annotations

import math

import numpy as np

Box = tuple[int, int, int, int]


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, start, stop) of every horizontal run of True, in scan order."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)
    rows, starts = np.nonzero(step == 1)
    _, stops = np.nonzero(step == -1)
    return rows, starts, stops


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def regions(mask: np.ndarray) -> list[tuple[int, Box]]:
    """(pixel count, (x0, y0, x1, y1)) of each 8-connected region of a boolean (H, W) mask, in scan order
    of the regions' first pixels; x1, y1 exclusive."""
    rows, starts, stops = (a.tolist() for a in _runs(np.asarray(mask, dtype=bool)))
    parent = list(range(len(rows)))
    prev_lo, prev_hi = 0, 0  # runs of the row above: [prev_lo, prev_hi)
    i = 0
    while i < len(rows):
        row, first = rows[i], i
        if not (prev_hi > prev_lo and rows[prev_lo] == row - 1):
            prev_lo = prev_hi = first  # no runs on the row above
        k = prev_lo
        while i < len(rows) and rows[i] == row:
            s, e = starts[i], stops[i]
            while k < prev_hi and stops[k] < s:  # ends before this run's left diagonal
                k += 1
            m = k
            while m < prev_hi and starts[m] <= e:  # starts at or before this run's right diagonal
                a, b = _find(parent, m), _find(parent, i)
                if a != b:
                    parent[max(a, b)] = min(a, b)  # the root is the region's first run
                m += 1
            i += 1
        prev_lo, prev_hi = first, i
    found: dict[int, list[int]] = {}
    for j in range(len(rows)):
        r = _find(parent, j)
        s, e, y = starts[j], stops[j], rows[j]
        if r not in found:
            found[r] = [0, s, y, e, y + 1]
        acc = found[r]
        acc[0] += e - s
        acc[1], acc[3], acc[4] = min(acc[1], s), max(acc[3], e), y + 1
    return [(acc[0], (acc[1], acc[2], acc[3], acc[4])) for _, acc in sorted(found.items())]


def boxes_from_map(amap: np.ndarray, threshold: float) -> list[Box]:
    """(x0, y0, x1, y1) of the 8-connected regions of ``amap > threshold``, largest first."""
    found = regions(np.asarray(amap) > threshold)
    order = np.argsort([-n for n, _ in found], kind="stable")
    return [found[i][1] for i in order]


def scale_boxes(boxes: list[Box], fx: float, fy: float, limit: tuple[int, int]) -> list[Box]:
    """Boxes scaled by (fx, fy), outward to whole pixels, clipped to ``limit`` = (w, h)."""
    return [(int(x0 * fx), int(y0 * fy), min(limit[0], math.ceil(x1 * fx)), min(limit[1], math.ceil(y1 * fy)))
            for x0, y0, x1, y1 in boxes]


__all__ = ["boxes_from_map", "regions", "scale_boxes"]
