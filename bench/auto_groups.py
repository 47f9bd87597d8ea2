"""How well ``group_keys(paths, "auto")`` recovers magnetic_tile's physical tiles on train/good.

    python bench/auto_groups.py [../shared/data] [--out bench/results/auto_groups_magnetic_tile.json]

Truth: ``magnetic_tile_tiles.csv`` (conservative: two tiles shot back to back may share an id, so a
"tile" with two shots under one lighting holds several parts). Reported: purity (share of images whose
group's most common tile is theirs), pairwise recall over all same-tile pairs and over the tiles shot
exactly once per lighting (unambiguous ones), the group count and the largest group.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import Counter
from pathlib import Path

import numpy as np

from defectlab.config import write_json
from defectlab.data.groups import near_duplicate_groups


def group_scores(groups: list[int], truth: list[str], lighting: list[str]) -> dict[str, float]:
    g, t = np.array(groups), np.array(truth)
    n = len(g)
    iu = np.triu_indices(n, 1)
    same = (t[:, None] == t[None, :])[iu]
    together = (g[:, None] == g[None, :])[iu]
    per_tile = Counter(t.tolist())
    once = {k for k in per_tile if per_tile[k] == len({lighting[i] for i in np.flatnonzero(t == k)})}
    unamb = np.array([k in once for k in t])
    um = same & (unamb[:, None] & unamb[None, :])[iu]
    purity = sum(Counter(t[g == c].tolist()).most_common(1)[0][1] for c in set(groups)) / n
    return {"purity": round(float(purity), 3),
            "pair_recall_all": round(float((together & same).sum() / same.sum()), 3),
            "pair_recall_unambiguous": round(float((together & um).sum() / max(1, um.sum())), 3),
            "pair_precision": round(float((together & same).sum() / max(1, together.sum())), 3),
            "n_images": n, "n_tiles": len(per_tile), "n_unambiguous_tiles": len(once),
            "n_groups": len(set(groups)), "largest_group": max(Counter(groups).values())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="?", default="../shared/data")
    ap.add_argument("--out", default="bench/results/auto_groups_magnetic_tile.json")
    args = ap.parse_args()
    root = Path(args.data)
    rows = [r for r in csv.DictReader(open(root / "magnetic_tile_tiles.csv")) if r["split"] == "train"]
    paths = [root / "magnetic_tile" / r["path"] for r in rows]
    t0 = time.perf_counter()
    groups = near_duplicate_groups(paths)
    seconds = time.perf_counter() - t0
    res = group_scores(groups, [r["tile"] for r in rows], [r["path"].split("_num_")[0] for r in rows])
    res["seconds"] = round(seconds, 2)
    res["machine"] = "2-core machine shared with other work (timing indicative only)"
    write_json(args.out, {"data": "magnetic_tile train/good", "rule": "auto", "scores": res})
    print(res)


if __name__ == "__main__":
    main()
