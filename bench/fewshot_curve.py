"""Few-shot learning curve on magnetic_tile (tile split): the good-only detector (k = 0), the few-shot head
(``defectlab.verdict.fewshot``) and a plain U-Net trained on the same k labelled tiles per type.

For each k and seed: k physical tiles per defect type are drawn (``magnetic_tile_tiles.csv``; all shots
of a tile on one side; ``half`` = half of each type's tiles, rounded up); the head and the U-Net train on
all shots of those tiles (+ the same good training images as negatives); both are tested on every defect
image of the other tiles + all test/good images. Metrics: pixel AUROC, AUPRO (FPR <= 0.3), image AUROC
(head: the refined map's maximum; U-Net: its probability map's maximum), per-type pixel AUROC (type images
+ good images). Pixel metrics are computed at the detector's input resolution, pooled by ``--eval-stride``
(maps averaged, masks any-pixel), for every method alike.

    python bench/fewshot_curve.py --anomaly-run /tmp/verdict_runs/mt --cache /tmp/verdict_runs/mt_feats.pt \
        --shots 0 1 5 half --seeds 0 1 2 --unet-epochs 15

The anomaly run: ``defectlab anomaly fit ../shared/data/magnetic_tile --out /tmp/verdict_runs/mt`` (the
default detector). Features are computed once and cached (``--cache``). Writes
bench/results/fewshot_magnetic_tile.json and .png.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from defectlab.anomaly.detector import Detector
from defectlab.anomaly.runner import RunConfig, split_train
from defectlab.config import from_dict, load_yaml, write_json
from defectlab.data.index import GOOD, open_dataset
from defectlab.metrics.anomaly import aupro, image_auroc, pixel_auroc
from defectlab.verdict.fewshot import RefineConfig, Refiner
from defectlab.verdict.refine_run import Features, collect, draw_shots, read_groups, training_pairs

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "magnetic_tile"


def data_args(ap: argparse.ArgumentParser) -> None:
    """The images shared by the few-shot and verdict benchmarks: by default what ``defectlab refine`` uses
    (60 good negatives, every held-out good image for the refined threshold) and the whole test split; the
    ``--max-*`` options (0 = all) size it down for a busy machine."""
    ap.add_argument("--cache", default="/tmp/verdict_runs/mt_feats.pt")
    ap.add_argument("--max-good", type=int, default=RefineConfig.max_good, help="good training images as negatives")
    ap.add_argument("--max-good-test", type=int, default=0, help="test/good images (0: all)")
    ap.add_argument("--max-holdout", type=int, default=0, help="held-out good images, refined threshold (0: all)")
    ap.add_argument("--max-shots-per-tile", type=int, default=0, help="shots kept per defective tile (0: all)")
    ap.add_argument("--shard", default="", help="i/N: only compute and cache shard i of N of the features")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 on a machine busy with other work)")


def _at_most(limit: int, n: int) -> int:
    return n if limit <= 0 else min(limit, n)


def load_features(det: Detector, run: Path, data: Path, args: argparse.Namespace) -> tuple[Features, dict]:
    """Test images (at most ``max_shots_per_tile`` shots per defective tile, ``max_good_test`` good ones),
    good negatives (fitted on) and held-out good images (refined threshold); features cached in shards."""
    index = open_dataset(data)
    run_cfg = from_dict(RunConfig, load_yaml(run / "config.yaml"), where="config.yaml")
    fit_recs, hold_recs = split_train(index, run_cfg)
    rng = random.Random(0)
    negatives = rng.sample(fit_recs, min(args.max_good, len(fit_recs)))
    holdout = rng.sample(hold_recs, _at_most(args.max_holdout, len(hold_recs)))
    test = index.select(split="test")
    good_test = [r for r in test if r.defect_type == GOOD]
    good_test = rng.sample(good_test, _at_most(args.max_good_test, len(good_test)))
    defects = [r for r in test if r.defect_type != GOOD]
    keys = read_groups(data.parent / "magnetic_tile_tiles.csv", data, [r.path for r in defects])
    seen: dict[str, int] = {}
    kept = []
    for r, k in zip(defects, keys, strict=True):
        seen[k] = seen.get(k, 0) + 1
        if not args.max_shots_per_tile or seen[k] <= args.max_shots_per_tile:
            kept.append(r)
    test = kept + good_test
    records = test + negatives + holdout
    parts = {
        "test": list(range(len(test))),
        "negatives": list(range(len(test), len(test) + len(negatives))),
        "holdout": list(range(len(test) + len(negatives), len(records))),
    }
    cache = Path(args.cache)
    n = int(args.shard.split("/")[1]) if args.shard else 3
    shards = [cache.with_suffix(f".{i}of{n}.pt") for i in range(n)]
    if args.shard:
        i = int(args.shard.split("/")[0])
        t0 = time.time()
        feats = collect(det, records[i::n])
        tmp = shards[i].with_suffix(".tmp")
        torch.save({"records": records[i::n], "features": feats}, tmp)
        tmp.rename(shards[i])
        print(f"features of {len(records[i::n])} images in {time.time() - t0:.0f} s -> {shards[i]}", flush=True)
        sys.exit(0)
    blobs = [torch.load(s, weights_only=False) for s in shards]
    feats = Features(list(records), [None] * len(records), [None] * len(records), [0.0] * len(records),
                     [None] * len(records))  # type: ignore[list-item]
    for i, blob in enumerate(blobs):
        assert [str(r.path) for r in blob["records"]] == [str(r.path) for r in records[i::n]], "stale cache"
        f = blob["features"]
        for j, pos in enumerate(range(i, len(records), n)):
            feats.emb[pos], feats.maps[pos], feats.scores[pos], feats.masks[pos] = (
                f.emb[j], f.maps[j], f.scores[j], f.masks[j])
    return feats, parts


def shared_setup(
    args: argparse.Namespace,
) -> tuple[Detector, Features, dict, list[int], list[int], list[str], list[str]]:
    """(detector, features, index parts, defect test indices, good test indices, tile keys of the defects,
    defect classes) for ``--data`` and ``--anomaly-run``: the setup both benchmarks share."""
    data, run = Path(args.data), Path(args.anomaly_run)
    det = Detector.load(run)
    feats, parts = load_features(det, run, data, args)
    test = parts["test"]
    defects = [i for i in test if feats.records[i].defect_type != GOOD]
    goods = [i for i in test if feats.records[i].defect_type == GOOD]
    keys = read_groups(data.parent / "magnetic_tile_tiles.csv", data, [feats.records[i].path for i in defects])
    classes = sorted({feats.records[i].defect_type for i in defects})
    return det, feats, parts, defects, goods, keys, classes


def pool_pair(amap: torch.Tensor, mask: torch.Tensor, stride: int) -> tuple[np.ndarray, np.ndarray]:
    if stride == 1:
        return amap.numpy(), mask.numpy()
    m = F.avg_pool2d(amap[None, None].float(), stride, ceil_mode=True)[0, 0]
    g = F.max_pool2d(mask[None, None].float(), stride, ceil_mode=True)[0, 0] > 0
    return m.numpy(), g.numpy()


def metrics(
    feats: Features, idx: list[int], maps: list[torch.Tensor], scores: list[float], stride: int
) -> dict:
    pairs = [pool_pair(m, feats.masks[i], stride) for m, i in zip(maps, idx, strict=True)]
    types = [feats.records[i].defect_type for i in idx]
    labels = [int(t != GOOD) for t in types]
    out = {
        "pixel_auroc": pixel_auroc([p[1] for p in pairs], [p[0] for p in pairs]),
        "aupro": aupro([p[1] for p in pairs], [p[0] for p in pairs], 0.3),
        "image_auroc": image_auroc(labels, scores),
        "per_type_pixel_auroc": {},
    }
    for t in sorted(set(types) - {GOOD}):
        sel = [j for j, tt in enumerate(types) if tt in (t, GOOD)]
        out["per_type_pixel_auroc"][t] = pixel_auroc([pairs[j][1] for j in sel], [pairs[j][0] for j in sel])
    return out


def unet_maps(
    feats: Features, train_idx: list[int], test_idx: list[int], epochs: int, size: int, seed: int
) -> list[torch.Tensor]:
    """A small U-Net (``defectlab.segment``) on the same labelled images + negatives, maps at input size."""
    from PIL import Image

    from defectlab.segment.model import SegConfig, Segmenter

    recs = [feats.records[i] for i in train_idx]
    seg = Segmenter(
        SegConfig(encoder="small", size=size, epochs=epochs, max_good_train=None, seed=seed, num_threads=2)
    ).fit(recs, sorted({r.defect_type for r in recs} - {GOOD}))
    out = []
    for i in test_idx:
        h, w = feats.maps[i].shape
        im = Image.open(feats.records[i].path).convert("RGB").resize((w, h), Image.BILINEAR)
        out.append(torch.from_numpy(seg.predict_proba([im])[0].max(axis=0)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--anomaly-run", required=True)
    data_args(ap)
    ap.add_argument("--shots", nargs="+", default=["0", "1", "5", "half"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--unet-epochs", type=int, default=15, help="0: no U-Net baseline")
    ap.add_argument("--unet-size", type=int, default=128)
    ap.add_argument("--eval-stride", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fewshot_magnetic_tile.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not data.is_dir():
        print(f"{data}: dataset not present", file=sys.stderr)
        return 2
    det, feats, parts, defects, goods, keys, classes = shared_setup(args)
    thr = det.thresholds.pixel
    rows = []
    for shots in args.shots:
        k = shots if shots == "half" else int(shots)
        for seed in args.seeds if k != 0 else [0]:
            chosen = (
                [defects[j] for j in draw_shots([feats.records[i] for i in defects], keys, k, seed)]
                if k
                else []
            )
            test_idx = [i for i in defects if i not in set(chosen)] + goods
            row = {"shots": shots, "seed": seed, "n_train_images": len(chosen), "n_test": len(test_idx)}
            row["detector"] = metrics(
                feats,
                test_idx,
                [feats.maps[i] for i in test_idx],
                [feats.scores[i] for i in test_idx],
                args.eval_stride,
            )
            if k:
                t0 = time.time()
                xs, ys = training_pairs(feats, chosen + parts["negatives"], classes, thr)
                cfg = RefineConfig(steps=args.steps, seed=seed)
                head = Refiner(xs[0].shape[0], classes, cfg.hidden).fit(xs, ys, cfg, shots=len(chosen))
                maps = [_refined(head, feats, i, thr) for i in test_idx]
                row["head_fit_s"] = round(time.time() - t0, 1)
                row["fewshot"] = metrics(
                    feats, test_idx, maps, [float(m.max()) for m in maps], args.eval_stride
                )
                if args.unet_epochs:
                    t0 = time.time()
                    umaps = unet_maps(
                        feats, chosen + parts["negatives"], test_idx, args.unet_epochs, args.unet_size, seed
                    )
                    row["unet_s"] = round(time.time() - t0, 1)
                    row["unet"] = metrics(
                        feats, test_idx, umaps, [float(m.max()) for m in umaps], args.eval_stride
                    )
            rows.append(row)
            print(
                {m: round(row[m]["pixel_auroc"], 4) for m in ("detector", "fewshot", "unet") if m in row},
                {m: round(row[m]["aupro"], 4) for m in ("detector", "fewshot", "unet") if m in row},
                f"k={shots} seed={seed}",
                flush=True,
            )
            write_json(args.out, result(rows, args))
    write_json(args.out, result(rows, args))
    plot(rows, Path(args.out).with_suffix(".png"))
    return 0


def _refined(head: Refiner, feats: Features, i: int, thr: float) -> torch.Tensor:
    from defectlab.anomaly.base import AnomalyOutput

    out = AnomalyOutput(torch.tensor([feats.scores[i]]), feats.maps[i][None])
    return head.refine(feats.emb[i][None].float(), out, thr)[0][0]


def summarise(rows: list[dict]) -> dict:
    out: dict = {}
    for shots in dict.fromkeys(r["shots"] for r in rows):
        sel = [r for r in rows if r["shots"] == shots]
        entry = {}
        for m in ("detector", "fewshot", "unet"):
            if m not in sel[0]:
                continue
            entry[m] = {
                key: round(float(np.mean([r[m][key] for r in sel])), 4)
                for key in ("pixel_auroc", "aupro", "image_auroc")
            }
            entry[m]["pixel_auroc_std"] = round(float(np.std([r[m]["pixel_auroc"] for r in sel])), 4)
            entry[m]["per_type_pixel_auroc"] = {
                t: round(float(np.mean([r[m]["per_type_pixel_auroc"][t] for r in sel])), 4)
                for t in sel[0][m]["per_type_pixel_auroc"]
            }
        out[shots] = entry
    return out


def result(rows: list[dict], args: argparse.Namespace) -> dict:
    return {
        "summary": summarise(rows),
        "runs": rows,
        "args": vars(args),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "loadavg": list(os.getloadavg()),
            "note": "2-core machine shared with other work",
        },
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarise(rows)
    ks = list(s)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = {"detector": "good-only detector", "fewshot": "few-shot head", "unet": "U-Net, same labels"}
    for ax, key in zip(axes, ("pixel_auroc", "aupro"), strict=True):
        for m, style in (("detector", "k--"), ("fewshot", "o-"), ("unet", "s-")):
            pts = [(i, s[k][m][key]) for i, k in enumerate(ks) if m in s[k]]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=names[m])
        ax.set_xticks(range(len(ks)), [f"k={k}" for k in ks])
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("magnetic_tile, tile split: k labelled tiles per defect type (mean of seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
