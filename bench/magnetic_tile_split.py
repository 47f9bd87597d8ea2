"""Which magnetic_tile images show the same physical tile (shared by the benchmarks that re-split by tile).

magnetic_tile photographs every tile six times (exp1..exp6: six lighting setups) with consecutive frame
numbers in the file names (``exp<k>_num_<frame>.jpg``); the shots of one tile are a run of frame numbers
with gaps of at most 200 and one class. The tile split puts every 4th good tile (in frame order), with all its
shots, into test.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def tile_of(items: Iterable[tuple[str, str]]) -> dict[str, int]:
    """(path, defect type) pairs -> {path: tile id}."""
    frame = lambda item: int(Path(item[0]).stem.split("_")[-1])  # noqa: E731
    out: dict[str, int] = {}
    tile, prev = -1, None
    for item in sorted(items, key=frame):
        if prev is None or frame(item) - frame(prev) > 200 or item[1] != prev[1]:
            tile += 1
        out[str(item[0])], prev = tile, item
    return out


def test_tiles(tiles: dict[str, int], good_paths: Iterable[str]) -> set[int]:
    """The good tiles of the tile split's test side: every 4th, in frame order."""
    return set(sorted({tiles[str(p)] for p in good_paths})[::4])
