"""Masks -> instances: connected components, boxes, RLE and polygon outlines.

Conventions (shared by every exporter):

* One **instance** is one 8-connected component of a defect mask (pixels touching at a corner belong
  together), its category is the image's defect type.
* Pixel ``(row r, col c)`` covers the square ``[c, c+1) x [r, r+1)``. Boxes are COCO ``[x, y, w, h]``
  with ``x = min col``, ``w = max col - min col + 1``, so a box is exactly its component's extent.
* **Polygons** follow the pixel edges (vertices on pixel corners), so they enclose exactly the
  component's pixels; pycocotools' ``frPyObjects`` rasterises them back to the same mask when not
  simplified. **Holes** are kept: each hole's outline is spliced into the outer outline through a
  zero-width "keyhole" bridge, giving one polygon per instance (YOLO-seg needs one) whose even-odd
  fill has the hole empty. RLE is exact by construction and also keeps holes.
* Simplification is Douglas-Peucker with a tolerance in pixels (0 = only drop collinear vertices).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from defectlab.data.regions import Box, components, mask_box


@dataclass
class Instance:
    """One object of an image. ``mask`` is the full-image HxW bool mask (None for box-only imports)."""

    category: str
    bbox: Box
    area: int
    mask: np.ndarray | None = None
    polygons: list[list[float]] = field(default_factory=list)  # COCO flat [x1, y1, x2, y2, ...]

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        x, y, w, h = self.bbox
        return (x, y, x + w, y + h)


# ----------------------------------------------------------------------------------------------- RLE
def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE, JSON-ready (``counts`` as str)."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    counts = rle["counts"]
    coded = {"size": list(rle["size"]),
             "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    if isinstance(counts, list):  # uncompressed RLE
        coded = mask_utils.frPyObjects(coded, *rle["size"])
    return mask_utils.decode(coded).astype(bool)


# ----------------------------------------------------------------------------------- outline tracing
# Directions on the pixel-corner grid (x right, y down): 0 +x, 1 +y, 2 -x, 3 -y.
_STEP = ((1, 0), (0, 1), (-1, 0), (0, -1))


def _edges(mask: np.ndarray) -> dict[tuple[int, int], list[int]]:
    """Directed boundary edges, keyed by start corner, with the foreground on the travel's right."""
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    inner = m[1:-1, 1:-1]
    out: dict[tuple[int, int], list[int]] = {}
    sides = (  # (neighbour is background, start corner offset (dx, dy), direction)
        (~m[:-2, 1:-1], (0, 0), 0),  # top side: (c, r) -> (c+1, r)
        (~m[1:-1, 2:], (1, 0), 1),  # right side: (c+1, r) -> (c+1, r+1)
        (~m[2:, 1:-1], (1, 1), 2),  # bottom side: (c+1, r+1) -> (c, r+1)
        (~m[1:-1, :-2], (0, 1), 3),  # left side: (c, r+1) -> (c, r)
    )
    for bg, (dx, dy), d in sides:
        rr, cc = np.nonzero(inner & bg)
        for r, c in zip(rr.tolist(), cc.tolist(), strict=True):
            out.setdefault((c + dx, r + dy), []).append(d)
    return out


def trace_loops(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines along pixel edges (vertices = direction changes), as (N, 2) float arrays of x, y.

    Outer outlines run clockwise on screen (positive shoelace area with y down), holes the other way.
    At a corner where two foreground pixels touch diagonally the trace turns left, which keeps them in
    one outline (8-connectivity of the foreground).
    """
    edges = _edges(mask)
    loops: list[np.ndarray] = []
    while edges:
        start = next((k for k, v in edges.items() if len(v) == 1), next(iter(edges)))
        pts: list[tuple[int, int]] = []
        pos, prev = start, None
        while True:
            options = edges.get(pos)
            if not options:
                break
            if len(options) == 1 or prev is None:
                d = options[0]
            else:  # saddle corner: turn left relative to the incoming direction
                left = (prev + 3) % 4
                d = left if left in options else options[0]
            options.remove(d)
            if not options:
                del edges[pos]
            if d != prev:
                pts.append(pos)
            prev = d
            pos = (pos[0] + _STEP[d][0], pos[1] + _STEP[d][1])
        if len(pts) >= 2 and pts[0] != pts[-1]:
            # the start corner is a vertex only if the closing direction differs from the first one
            first_dir = _direction(pts[0], pts[1])
            if prev == first_dir:
                pts = pts[1:]
        if len(pts) >= 3:
            loops.append(np.asarray(pts, dtype=np.float64))
    return loops


def _direction(a: tuple[int, int], b: tuple[int, int]) -> int:
    dx, dy = np.sign(b[0] - a[0]), np.sign(b[1] - a[1])
    return _STEP.index((int(dx), int(dy)))


def signed_area(loop: np.ndarray) -> float:
    x, y = loop[:, 0], loop[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def simplify(loop: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on a closed outline; never below 3 vertices."""
    if tolerance <= 0 or len(loop) <= 4:
        return loop
    # split the ring at its first vertex and the vertex farthest from it, simplify both halves
    far = int(np.argmax(((loop - loop[0]) ** 2).sum(axis=1)))
    a = _dp(np.vstack([loop[: far + 1]]), tolerance)
    b = _dp(np.vstack([loop[far:], loop[:1]]), tolerance)
    out = np.vstack([a[:-1], b[:-1]])
    return out if len(out) >= 3 else loop


def _dp(points: np.ndarray, tol: float) -> np.ndarray:
    keep = np.zeros(len(points), dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        i, j = stack.pop()
        if j <= i + 1:
            continue
        seg = points[j] - points[i]
        rel = points[i + 1 : j] - points[i]
        norm = float(np.hypot(*seg))
        if norm == 0:
            dist = np.hypot(rel[:, 0], rel[:, 1])
        else:
            dist = np.abs(seg[0] * rel[:, 1] - seg[1] * rel[:, 0]) / norm
        k = int(np.argmax(dist))
        if dist[k] > tol:
            keep[i + 1 + k] = True
            stack += [(i, i + 1 + k), (i + 1 + k, j)]
    return points[keep]


def _bridge(poly: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Splice ``hole`` into ``poly`` through a zero-width bridge between their closest vertices."""
    d = ((poly[:, None, :] - hole[None, :, :]) ** 2).sum(axis=2)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    ring = np.vstack([hole[j:], hole[: j + 1]])  # hole from j around back to j
    return np.vstack([poly[: i + 1], ring, poly[i:]])


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.0) -> list[list[float]]:
    """Polygons (COCO flat lists) of one instance mask: one polygon per outer outline, its holes
    bridged in. An 8-connected component has one outer outline, hence one polygon."""
    loops = [simplify(lp, tolerance) for lp in trace_loops(mask)]
    outers = [lp for lp in loops if signed_area(lp) > 0]
    holes = [lp for lp in loops if signed_area(lp) < 0]
    if not outers:
        return []
    polys = [lp for lp in outers]
    for hole in holes:  # bridge each hole into the outer outline that contains it
        k = _containing(polys, outers, hole)
        polys[k] = _bridge(polys[k], hole)
    return [[round(float(v), 2) for v in p.ravel()] for p in polys]


def _containing(polys: list[np.ndarray], outers: list[np.ndarray], hole: np.ndarray) -> int:
    if len(outers) == 1:
        return 0
    from matplotlib.path import Path as MplPath

    probe = hole[0] + 0.5 * np.sign(hole[1] - hole[0])  # a point on the hole's edge
    for k, outer in enumerate(outers):
        if MplPath(outer).contains_point(probe):
            return k
    return 0


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons the way pycocotools does (union of the polygons)."""
    if not polygons:
        return np.zeros((height, width), dtype=bool)
    rles = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def mask_instances(mask: np.ndarray, category: str, *, min_area: int = 1, tolerance: float = 0.0,
                   polygons: bool = True) -> list[Instance]:
    """Every 8-connected component of ``mask`` (>= ``min_area`` pixels) as one ``Instance``."""
    out = []
    for comp in components(mask, min_area):
        polys = mask_to_polygons(_crop_trace(comp), tolerance) if polygons else []
        if polys:
            x0, y0 = _crop_origin(comp)
            polys = [_shift(p, x0, y0) for p in polys]
        out.append(Instance(category, mask_box(comp), int(comp.sum()), comp, polys))
    return out


def _crop_origin(comp: np.ndarray) -> tuple[int, int]:
    x, y, _, _ = mask_box(comp)
    return x, y


def _crop_trace(comp: np.ndarray) -> np.ndarray:
    x, y, w, h = mask_box(comp)
    return comp[y : y + h, x : x + w]


def _shift(poly: list[float], dx: int, dy: int) -> list[float]:
    return [round(v + (dx if i % 2 == 0 else dy), 2) for i, v in enumerate(poly)]


def box_instance(category: str, xyxy: tuple[float, float, float, float]) -> Instance:
    """A box-only instance (imports): x0, y0 inclusive, x1, y1 exclusive, in pixels."""
    x0, y0, x1, y1 = (int(round(v)) for v in xyxy)
    w, h = x1 - x0, y1 - y0
    return Instance(category, (x0, y0, w, h), w * h)
