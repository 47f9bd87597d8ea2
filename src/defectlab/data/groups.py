"""Groups of images that show one physical part (several shots of one tile, one board, one casting).

Any split of such images (hold-out for a threshold, classification folds, few-shot draws) must keep a
group on one side, or it measures partly whether the model has seen that part. A *group rule* says how
to find the groups:

* ``""`` or ``"none"``: every image is its own group;
* ``"regex:PATTERN"`` (or a bare pattern): the part is named in the file name: the first capture
  group of ``PATTERN`` (else the whole match), searched in the file name;
* ``"auto"``: near-duplicate images are grouped from their pixels (see :func:`near_duplicate_groups`):
  shots of one part under other lightings or exposures look alike once each is standardised;
* ``"csv:PATH"``: a CSV file names each image's group: a ``path`` column (the image's path relative to the
  dataset, or just its file name) and a ``group`` column (else the last column, e.g. ``tile`` in
  ``magnetic_tile_tiles.csv``); an image is found by the longest tail of its path that the CSV names.

    >>> group_keys(["a/tile7_exp1.png", "a/tile7_exp2.png", "a/tile9_exp1.png"], r"regex:(tile\\d+)")
    ['tile7', 'tile7', 'tile9']
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from defectlab.errors import BadInputError, ConfigError

AUTO = "auto"
CSV = "csv:"
THUMB = 16  # side of the standardised thumbnail compared
LINK_DISTANCE = 0.1  # average-linkage cut: 1 - correlation of the thumbnails
SIZE_TOLERANCE = 0.15  # images whose width or height differ by more than this (log ratio) are other parts
MAX_LINKAGE = 6000  # above this many images: sparse single linkage at a third of the cut (bounded memory)


def group_keys(paths: Sequence[str | Path], rule: str) -> list[str]:
    """One group key per path under ``rule`` (see the module docstring); keys are strings."""
    rule = (rule or "").strip()
    if rule in ("", "none"):
        return [str(p) for p in paths]
    if rule == AUTO:
        return [f"auto{g}" for g in near_duplicate_groups(paths)]
    if rule.startswith(CSV):
        return csv_group_keys(paths, rule[len(CSV):])
    pattern = rule[len("regex:"):] if rule.startswith("regex:") else rule
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"group rule '{rule}' is not a regular expression: {exc}") from None
    keys = []
    for p in paths:
        m = regex.search(Path(p).name)
        if m is None:
            raise BadInputError(p, f"file name does not match the group rule '{rule}'")
        keys.append(m.group(1) if regex.groups and m.group(1) is not None else m.group(0))
    return keys


def csv_group_keys(paths: Sequence[str | Path], table: str | Path) -> list[str]:
    """Group keys of ``paths`` read from a CSV table (see the module docstring, rule ``csv:PATH``)."""
    import csv

    table = Path(table)
    if not table.is_file():
        raise BadInputError(table, "group table not found (rule csv:PATH)")
    try:
        with open(table, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(table, f"cannot read group table ({exc})") from None
    if "path" not in fields or len(fields) < 2:
        raise BadInputError(table, f"group table needs a 'path' column and a group column, has {fields}")
    column = "group" if "group" in fields else fields[-1]
    by_tail = {tuple(Path(r["path"].strip()).parts): (r[column] or "").strip() for r in rows if r.get("path")}
    keys = []
    for p in paths:
        parts = Path(p).parts
        key = next((by_tail[parts[i:]] for i in range(len(parts)) if parts[i:] in by_tail), None)
        if not key:
            raise BadInputError(p, f"image has no group in {table}")
        keys.append(key)
    return keys


def group_indices(keys: Sequence[str]) -> list[list[int]]:
    """Indices grouped by key, groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return list(groups.values())


def thumbnails(paths: Sequence[str | Path], side: int = THUMB) -> tuple[np.ndarray, np.ndarray]:
    """(N, side*side) unit-norm thumbnails (grayscale, squashed to ``side`` px, the best-fitting plane
    removed: exposure, gain and a linear illumination gradient drop out) and (N, 2) log sizes; only one
    image is decoded at a time."""
    from PIL import Image

    from defectlab.data.io import load_pil

    yy, xx = np.mgrid[0:side, 0:side]
    plane = np.stack([np.ones(side * side), xx.ravel() / side - 0.5, yy.ravel() / side - 0.5], 1)
    residual = (np.eye(side * side) - plane @ np.linalg.pinv(plane)).astype(np.float32)
    rows = np.empty((len(paths), side * side), dtype=np.float32)
    sizes = np.empty((len(paths), 2), dtype=np.float64)
    for i, p in enumerate(paths):
        im = load_pil(p, "L")
        sizes[i] = math.log(im.width), math.log(im.height)
        a = residual @ np.asarray(im.resize((side, side), Image.BILINEAR), dtype=np.float32).ravel()
        rows[i] = a / (np.linalg.norm(a) + 1e-6)
    return rows, sizes


def near_duplicate_groups(paths: Sequence[str | Path], *, distance: float = LINK_DISTANCE,
                          size_tolerance: float = SIZE_TOLERANCE) -> list[int]:
    """A group id per image (0, 1, ... in order of first appearance), from pixel similarity alone.

    Each image becomes a 16x16 grayscale thumbnail less its best-fitting plane, with unit norm
    (exposure, gain and a linear lighting gradient drop out); the distance of two images is one minus
    the correlation of their thumbnails, or more than any cut when their widths or heights differ by
    more than ``size_tolerance`` (log ratio: crops of one part by one camera have one size). Average
    linkage cut at ``distance`` groups them: unlike single linkage it does not chain similar-looking
    parts into one giant group. On magnetic_tile's
    train/good (715 shots of ~127 tiles under 6 lightings) it recovers 92% of the same-tile pairs of the
    tiles shot once per lighting, at group purity 0.67 against the tile list (docs/anomaly.md).
    Above ``MAX_LINKAGE`` images, connected components of the pairs closer than ``distance / 3``.
    """
    n = len(paths)
    if n <= 1:
        return [0] * n
    x, sizes = thumbnails(paths)
    if n > MAX_LINKAGE:
        labels = _sparse_components(x, sizes, distance / 3, size_tolerance)
    else:
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import squareform

        d = np.clip(1.0 - x @ x.T, 0.0, None).astype(np.float64)
        d += 2.0 * (np.abs(sizes[:, None, :] - sizes[None, :, :]).max(-1) > size_tolerance)
        np.fill_diagonal(d, 0.0)
        labels = fcluster(linkage(squareform(d, checks=False), "average"), distance, "distance")
    first: dict[int, int] = {}
    return [first.setdefault(int(lab), len(first)) for lab in labels]


def _sparse_components(x: np.ndarray, sizes: np.ndarray, distance: float,
                       size_tolerance: float) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows, cols = [], []
    for start in range(0, len(x), 1024):
        d = 1.0 - x[start:start + 1024] @ x.T
        d[np.abs(sizes[start:start + 1024, None, :] - sizes[None, :, :]).max(-1) > size_tolerance] = np.inf
        r, c = np.nonzero(d < distance)
        rows.append(r + start)
        cols.append(c)
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(len(x), len(x)))
    return connected_components(graph, directed=False)[1]


__all__ = ["AUTO", "CSV", "csv_group_keys", "group_keys", "group_indices", "near_duplicate_groups", "thumbnails"]
