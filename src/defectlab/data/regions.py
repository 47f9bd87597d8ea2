"""Mask geometry shared by every layer: connected components of a defect mask and their boxes.

Conventions: one region is one 8-connected component (pixels touching at a corner belong together);
pixel ``(row r, col c)`` covers ``[c, c+1) x [r, r+1)``; a box is COCO ``[x, y, w, h]`` with
``w = max col - min col + 1``, exactly its component's extent.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Box = tuple[int, int, int, int]  # x, y, w, h (pixels)
EIGHT = np.ones((3, 3), dtype=bool)


def components(mask: np.ndarray, min_area: int = 1) -> list[np.ndarray]:
    """The 8-connected components of a bool mask with at least ``min_area`` pixels, as full-size masks,
    ordered by their first pixel in raster order."""
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=EIGHT)
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    return [labels == i for i in range(1, n + 1) if sizes[i] >= min_area]


def mask_box(mask: np.ndarray) -> Box:
    """``[x, y, w, h]`` of the pixels set in ``mask`` (the tight extent, inclusive of the last pixel)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("empty mask has no box")
    return (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


__all__ = ["Box", "EIGHT", "components", "mask_box"]
