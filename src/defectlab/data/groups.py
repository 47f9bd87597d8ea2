"""Groups of images that show one physical part (several shots of one tile, one board, one casting).

Any split of such images (hold-out for a threshold, classification folds, few-shot draws) must keep a
group on one side, or it measures partly whether the model has seen that part. A *group rule* says how
to find the groups:

* ``""`` or ``"none"``: every image is its own group;
* ``"regex:PATTERN"`` (or a bare pattern): the part is named in the file name: the first capture
  group of ``PATTERN`` (else the whole match), searched in the file name;
* ``"auto"``: near-duplicate images are grouped from their pixels (see :func:`near_duplicate_groups`);
* ``"csv:PATH"``: a CSV file names each image's group: a ``path`` column (the image's path relative to the
  dataset, or just its file name) and a ``group`` column (else the last column, e.g. ``tile`` in
  ``magnetic_tile_tiles.csv``); an image is found by the longest tail of its path that the CSV names.

    >>> group_keys(["a/tile7_exp1.png", "a/tile7_exp2.png", "a/tile9_exp1.png"], r"regex:(tile\\d+)")
    ['tile7', 'tile7', 'tile9']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from defectlab.errors import BadInputError, ConfigError

AUTO = "auto"
CSV = "csv:"


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


def near_duplicate_groups(paths: Sequence[str | Path]) -> list[int]:
    """A group id per image, from pixel similarity alone (shots of one part)."""
    raise ConfigError("group rule 'auto' is not available yet: name the part with a regex (regex:PATTERN)")


__all__ = ["AUTO", "CSV", "csv_group_keys", "group_keys", "group_indices", "near_duplicate_groups"]
