"""PatchCore fit with its feature extraction on Ray (``anomaly fit --executor ray``) against the local fit.

    nice $VENV/bin/python bench/ray_fit.py --data ../shared/data/magnetic_tile
    nice $VENV/bin/python bench/ray_fit.py [--n-train 96] [--size 128]          # a synthetic object set

Fits the default PatchCore (all ``anomaly fit`` defaults) on DATA, or on a synthetic object set of
``n_train`` good images, twice in one process with one torch thread: locally, then with the features
extracted by a local Ray actor pool (2 actors x 1 thread; Ray's start-up counted). Writes
``bench/results/ray_fit.json``: both times (the whole ``fit_detector``, and its model fit alone: features and coreset,
Ray's start-up included), their ratios and whether the memory banks and thresholds are identical.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from defectlab.anomaly.runner import RunConfig, fit_detector
from defectlab.data.synthetic import SynthConfig, make_synthetic

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=96)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--data", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            data = make_synthetic(Path(tmp), SynthConfig(kind="object", size=args.size, n_train=args.n_train,
                                                         n_test_good=2, n_per_defect=2, seed=0))
            cfg = RunConfig(data=str(data), image_size=args.size, holdout_group="none")
            what = f"{args.n_train} synthetic good images ({args.size} px)"
        else:
            cfg = RunConfig(data=str(args.data))
            what = f"{args.data.name} train/good (defaults: 256 px native, tile-group hold-out)"
        t0 = time.perf_counter()
        local = fit_detector(cfg, device="cpu")
        local_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        remote = fit_detector(cfg, device="cpu", executor="ray", workers=2)
        ray_s = time.perf_counter() - t0
    result = {
        "what": f"default PatchCore fit on {what}; 10% held out for the threshold: local (1 torch thread) "
                "vs features on a local Ray actor pool (2 actors x 1 "
                "thread, Ray start-up included), one process, side by side",
        "machine": "2-core machine shared with other work (timings indicative only)",
        "seconds": {"local": round(local_s, 1), "ray": round(ray_s, 1)},
        "ray_speed_vs_local": round(local_s / ray_s, 2),
        "model_fit_seconds": {"local": local.training["fit_seconds"], "ray": remote.training["fit_seconds"]},
        "model_fit_speed_vs_local": round(local.training["fit_seconds"] / remote.training["fit_seconds"], 2),
        "n_fit": local.training["n_fit"], "bank_rows": int(local.model.memory_bank_.shape[0]),
        "bank_identical": bool(torch.equal(local.model.memory_bank_, remote.model.memory_bank_)),
        "threshold_identical": local.thresholds.image == remote.thresholds.image,
    }
    out = ROOT / "bench" / "results" / "ray_fit.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
