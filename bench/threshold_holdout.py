"""The deployable threshold on magnetic_tile: hold out single shots, or whole tiles?

    python bench/threshold_holdout.py [--seeds 5]      # -> bench/results/threshold_holdout.json

The deployable threshold is the 0.99 quantile of held-out good images' scores (``RunConfig.holdout``), so
it should give about 1% false alarms on new good parts. magnetic_tile shows every tile six times; split by
tile (``magnetic_tile_split``, every 4th good tile to test), the training tiles are fitted on except a 10%
hold-out that is either random shots (other shots of the same tiles stay in the fit: what a random hold-out
does when file names do not say which images show one part) or whole tiles (all their shots:
``--holdout-group``). Each threshold is then applied to the good images of the unseen test tiles (false
alarms) and to the defective images (flagged).

Default PatchCore recipe on the sweep's cached features (``patchcore_sweep.extract``: efficientnet_lite0
``_blocks.4`` + ``_blocks.10``, letterbox 256, intensity standardisation, 1% coreset); image score = plain
maximum of the patch distances, as in the sweep.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from magnetic_tile_split import test_tiles, tile_of
from patchcore_sweep import HERE, embed, extract

from defectlab.anomaly.coreset import StreamingCoreset
from defectlab.anomaly.search import torch_nearest as nearest

LAYERS = ["_blocks.4", "_blocks.10"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--quantile", type=float, default=0.99)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    data = extract("efficientnet_lite0", LAYERS, 256, True)
    # every image as (split, index into that split's features, path, label, defect type)
    images = [(split, i, path, label, kind) for split in ("train", "test")
              for i, (path, label, kind) in enumerate(data[split][1])]
    tiles = tile_of((im[2], im[4]) for im in images)
    good = [im for im in images if im[3] == 0]
    new_tiles = test_tiles(tiles, (im[2] for im in good))
    train_good = [im for im in good if tiles[im[2]] not in new_tiles]
    test_good = [im for im in good if tiles[im[2]] in new_tiles]
    defective = [im for im in images if im[3] == 1]

    def embedded(ims: list) -> torch.Tensor:
        parts = []
        for split in ("train", "test"):
            rows = [im[1] for im in ims if im[0] == split]
            parts += [embed(data[split][0], LAYERS, 3, rows[j:j + 32]) for j in range(0, len(rows), 32)]
        return torch.cat(parts)

    def scores(bank: torch.Tensor, ims: list) -> np.ndarray:
        e = embedded(ims)
        b, c = e.shape[:2]
        d = nearest(e.permute(0, 2, 3, 1).reshape(-1, c), bank, (bank * bank).sum(1))[0]
        return d.view(b, -1).max(1).values.numpy()

    train_tiles = sorted({tiles[im[2]] for im in train_good})
    n_hold = round(0.1 * len(train_good))
    runs = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        shots = set(rng.choice(len(train_good), n_hold, replace=False).tolist())
        held_tiles = set(rng.choice(train_tiles, round(0.1 * len(train_tiles)), replace=False).tolist())
        for mode, hold in (("random shots", shots),
                           ("whole tiles", {i for i, im in enumerate(train_good) if tiles[im[2]] in held_tiles})):
            fit = [im for i, im in enumerate(train_good) if i not in hold]
            held_out = [im for i, im in enumerate(train_good) if i in hold]
            sampler = StreamingCoreset(0.01, 152, seed=0)
            for j in range(0, len(fit), 16):
                e = embedded(fit[j:j + 16])
                sampler.add(e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]))
            bank = sampler.finish()
            s_held, s_good, s_def = scores(bank, held_out), scores(bank, test_good), scores(bank, defective)
            thr = float(np.quantile(s_held, args.quantile))
            run = {"seed": seed, "holdout": mode, "n_held": len(held_out), "threshold": thr,
                   "held_median": float(np.median(s_held)), "new_good_median": float(np.median(s_good)),
                   "false_alarms_new_tiles": float(np.mean(s_good > thr)),
                   "defects_flagged": float(np.mean(s_def > thr))}
            runs.append(run)
            print(json.dumps(run), flush=True)
    summary = {mode: {k: float(np.mean([r[k] for r in runs if r["holdout"] == mode]))
                      for k in ("threshold", "held_median", "false_alarms_new_tiles", "defects_flagged")}
               for mode in ("random shots", "whole tiles")}
    print(json.dumps(summary, indent=1))
    out = {"command": "python bench/threshold_holdout.py --seeds %d" % args.seeds, "quantile": args.quantile,
           "n_train_good": len(train_good), "n_new_good": len(test_good), "n_defective": len(defective),
           "runs": runs, "mean": summary}
    (HERE / "results" / "threshold_holdout.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
