"""NEU-DET steel surface defects (6 balanced classes): pretrained MobileNetV2, 5-fold test accuracy.

    $VENV/bin/python bench/classify_neu.py

The index is ``open_dataset``'s prefix layout (class = file name without its trailing ``_<number>``)
over ``IMAGES/`` and ``Validation_Images/`` (1800 images). 5 folds, no separate test split: for fold k, fold k is the
test set, fold k+1 validates (picks the checkpoint), the other three train (see
``defectlab.classify.experiment``). Writes ``bench/results/classify_neu.json`` and the run folder
``bench/results/tmp/classify_neu/`` (checkpoints, per-fold results; git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from defectlab.classify.experiment import AttemptSpec, DataConfig, ExperimentConfig, run_experiment
from defectlab.config import write_json
from defectlab.data.index import open_dataset

BENCH = Path(__file__).resolve().parent
DATA = BENCH.parent.parent / "shared" / "data" / "neu_det"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--freeze", type=int, default=2, help="freeze the first k of mobilenet_v2's 5 stages")
    ap.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared 2-core box")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "tmp" / "classify_neu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    index = open_dataset(args.data)
    train = {"epochs": args.epochs, "image_size": args.size, "batch_size": 32, "optimizer": "adamw", "lr": 1e-3,
             "weight_decay": 1e-4, "scheduler": "cosine", "warmup_epochs": 1, "augment": "basic"}
    cfg = ExperimentConfig(
        name="neu_det_5fold", data=DataConfig(split={"folds": args.folds, "test": 0.0, "seed": 0}),
        base={"model": {"name": "mobilenet_v2", "weights": "imagenet", "freeze": args.freeze, "dropout": 0.2},
              "train": train},
        attempts=[AttemptSpec(name="mobilenet_v2_imagenet")])
    load0, t0 = os.getloadavg(), time.time()
    row = run_experiment(cfg, args.out, index=index)[0]
    folds = [json.loads((args.out / row["attempt"] / f"fold{k}" / "result.json").read_text())
             for k in range(args.folds)]
    result = {
        "command": f"bench/classify_neu.py --size {args.size} --epochs {args.epochs} --freeze {args.freeze} "
                   f"--threads {args.threads}",
        "dataset": {"images": len(index.records), "classes": {c: n for c, n in index.counts()["all"].items()}},
        "model": row["model"], "weights": row["weights"], "freeze": args.freeze, "train": train, "folds": args.folds,
        "test_acc_mean": row["test_acc"], "test_acc_std": row["test_acc_std"],
        "balanced_acc_mean": row["balanced_acc"], "macro_f1_mean": row["macro_f1"],
        "per_fold_test_acc": [f["test_acc"] for f in folds], "per_fold_n_test": [f["n_test"] for f in folds],
        "epochs_run": [f["epochs_run"] for f in folds], "train_seconds_per_fold": [f["train_seconds"] for f in folds],
        "infer_ms_per_image": row["infer_ms"], "wall_seconds": time.time() - t0,
        "threads": args.threads, "loadavg_start": load0, "loadavg_end": os.getloadavg(),
    }
    write_json(BENCH / "results" / "classify_neu.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "train"}, indent=1))


if __name__ == "__main__":
    main()
