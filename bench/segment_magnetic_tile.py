"""Localisation benchmark on magnetic_tile: a supervised U-Net vs a good-only detector's thresholded maps.

Split (seeded, per defect type): half of each defect type's images train the U-Net (with at most
``--max-good-train`` good images from train/good, empty masks), the other half + all test/good images
test both methods. The anomaly detector (PatchCore, ``defectlab anomaly fit``) is trained on train/good
only; its maps are thresholded at its own deployable pixel threshold (no test labels used).

    python bench/segment_magnetic_tile.py --encoder mobilenet_v2 --mode binary --size 192 --epochs 20 \
        [--anomaly-run RUN | --fit-patchcore]

Writes bench/results/segment_magnetic_tile[_<tag>].json. CPU only, 2 threads; the machine is shared, so
the timings are noisy (load average recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from defectlab.config import to_dict, write_json
from defectlab.segment.model import SegConfig
from defectlab.segment.run import evaluate_anomaly_run, evaluate_run, fit_run, test_records

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "magnetic_tile"


def summary(m: dict) -> dict:
    wanted = ("threshold", "mean_iou", "mean_dice", "pixel_auroc", "aupro", "good", "oracle")
    keep = {k: m[k] for k in wanted if k in m}
    keep["per_type"] = {t: {k: round(v[k], 4) for k in ("n", "iou", "dice", "per_image_iou", "detected")}
                        for t, v in m["per_type"].items()}
    if "class_aware" in m:
        keep["class_aware"] = m["class_aware"]
    return keep


def fit_patchcore(data: Path, work: Path, args: argparse.Namespace) -> float:
    """PatchCore (defaults: mobilenet_v2 ImageNet, letterbox) on a seeded subset of train/good."""
    import random

    from defectlab.anomaly.runner import RunConfig, fit_detector
    from defectlab.data.index import GOOD, open_dataset

    torch.set_num_threads(2)
    index = open_dataset(data)
    good = index.select(split="train", defect_types=[GOOD])
    keep = set(random.Random(args.seed).sample(range(len(good)), min(args.patchcore_max_train, len(good))))
    index.records = [r for r in index.records if r.split != "train" or good.index(r) in keep]
    t0 = time.time()
    det = fit_detector(RunConfig(data=str(data), model="patchcore", image_size=args.patchcore_size), index)
    det.training["note"] = f"fitted on a seeded subset of {len(keep)} of {len(good)} train/good images"
    det.save(work / f"patchcore_{args.patchcore_size}")
    return round(time.time() - t0, 1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--encoder", default="mobilenet_v2")
    ap.add_argument("--mode", default="binary")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-good-train", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/defectlab_bench_segment", help="run folders (not in the repo)")
    ap.add_argument("--anomaly-run", default=None, help="a 'defectlab anomaly fit' run on this dataset")
    ap.add_argument("--fit-patchcore", action="store_true", help="fit a modest PatchCore run")
    ap.add_argument("--patchcore-size", type=int, default=256)
    ap.add_argument("--patchcore-max-train", type=int, default=200, help="train/good subset (CPU)")
    ap.add_argument("--patchcore-only", action="store_true", help="only fit the PatchCore run, then exit")
    ap.add_argument("--anomaly-only", action="store_true", help="only score --anomaly-run on the U-Net split")
    ap.add_argument("--reuse", action="store_true", help="reuse the U-Net run and anomaly scores in --work")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = Path(args.data)
    if not data.is_dir():
        print(f"{data}: dataset not present", file=sys.stderr)
        return 2
    work = Path(args.work)
    name = f"unet_{args.encoder}_{args.mode}_{args.size}"
    if args.patchcore_only:
        print(f"fitted in {fit_patchcore(data, work, args)} s")
        return 0
    if args.anomaly_only:  # score the anomaly run on the U-Net run's held-out images (split.json)
        out = work / f"{Path(args.anomaly_run).name}_on_{name}.json"
        evaluate_anomaly_run(args.anomaly_run, test_records(work / name, {}, None), out=out)
        print(f"wrote {out}")
        return 0
    run = work / name
    cfg = SegConfig(encoder=args.encoder, weights="imagenet" if args.encoder == "mobilenet_v2" else "none",
                    base=args.base, mode=args.mode, size=args.size, epochs=args.epochs,
                    batch_size=args.batch_size,
                    lr=args.lr, max_good_train=args.max_good_train, seed=args.seed, num_threads=2)
    load = {"start": os.getloadavg()}
    t0 = time.time()
    if not (args.reuse and (run / "model.pt").is_file()):
        fit_run(data, run, cfg)
    fit_s = time.time() - t0
    history = json.loads((run / "history.json").read_text())
    if args.reuse:  # the run was fitted by an earlier call with the same options: its epoch times
        fit_s = sum(h["seconds"] for h in history)
    load["after_fit"] = os.getloadavg()
    t0 = time.time()
    unet = evaluate_run(run, n_overlays=3)
    test_s = time.time() - t0
    records = test_records(run, {}, None)
    split = json.loads((run / "split.json").read_text())
    result = {
        "command": "python " + " ".join(sys.argv),
        "dataset": str(data), "cpu": platform.processor() or platform.machine(), "torch_threads": 2,
        "loadavg": load,
        "split": {k: {t: sum(r["defect_type"] == t for r in v) for t in sorted({r["defect_type"] for r in v})}
                  for k, v in split.items()},
        "unet": {"config": to_dict(cfg), "fit_seconds": round(fit_s, 1), "test_seconds": round(test_s, 1),
                 "loss_per_epoch": [round(h["loss"], 4) for h in history], **summary(unet)},
    }
    anomaly_run = args.anomaly_run
    if anomaly_run is None and args.fit_patchcore:
        anomaly_run = str(work / f"patchcore_{args.patchcore_size}")
        if not (Path(anomaly_run) / "detector.json").is_file():
            result["patchcore_fit_seconds"] = fit_patchcore(data, work, args)
    if anomaly_run:
        t0 = time.time()
        cached = work / f"{Path(anomaly_run).name}_on_{name}.json"
        if args.reuse and cached.is_file():
            am = json.loads(cached.read_text())
        else:
            am = evaluate_anomaly_run(anomaly_run, records, out=cached)
        from defectlab.anomaly.detector import Detector

        result["anomaly"] = {"run": anomaly_run, "method": am["method"],
                             "threshold_rule": am["threshold_rule"],
                             "info": {k: v for k, v in Detector.load(anomaly_run).info().items()
                                      if k in ("method", "backbone", "weights", "image_size", "resize")},
                             "test_seconds": round(time.time() - t0, 1), **summary(am)}
    else:
        result["anomaly"] = {"missing": "no anomaly run given (--anomaly-run RUN or --fit-patchcore)"}
    load["end"] = os.getloadavg()
    out = ROOT / "bench" / "results" / f"segment_magnetic_tile{('_' + args.tag) if args.tag else ''}.json"
    write_json(out, result)
    print(json.dumps({k: result[k] for k in ("unet", "anomaly")}, indent=1, default=str)[:4000])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
