"""Groups of images that show one physical part (several shots of one tile, one board, one casting).

Any split of such images (hold-out for a threshold, classification folds, few-shot draws) must keep a
group on one side, or it measures partly whether the model has seen that part. A *group rule* says how
to find the groups:

* ``""`` or ``"none"``: every image is its own group;
* ``"regex:PATTERN"`` (or a bare pattern): the part is named in the file name: the first capture
  group of ``PATTERN`` (else the whole match), searched in the file name;
* ``"auto"``: near-duplicate images are grouped from their pixels (see :func:`near_duplicate_groups`).

    >>> group_keys(["a/tile7_exp1.png", "a/tile7_exp2.png", "a/tile9_exp1.png"], r"regex:(tile\\d+)")
    ['tile7', 'tile7', 'tile9']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from defectlab.errors import BadInputError, ConfigError

AUTO = "auto"


def group_keys(paths: Sequence[str | Path], rule: str) -> list[str]:
    """One group key per path under ``rule`` (see the module docstring); keys are strings."""
    rule = (rule or "").strip()
    if rule in ("", "none"):
        return [str(p) for p in paths]
    if rule == AUTO:
        return [f"auto{g}" for g in near_duplicate_groups(paths)]
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


def group_indices(keys: Sequence[str]) -> list[list[int]]:
    """Indices grouped by key, groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return list(groups.values())


def near_duplicate_groups(paths: Sequence[str | Path]) -> list[int]:
    """A group id per image, from pixel similarity alone (shots of one part)."""
    raise ConfigError("group rule 'auto' is not available yet: name the part with a regex (regex:PATTERN)")


__all__ = ["AUTO", "group_keys", "group_indices", "near_duplicate_groups"]
