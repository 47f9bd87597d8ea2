"""The shipped classification examples on magnetic_tile defect types: every attempt's test metrics.

    $VENV/bin/python bench/classify_magnetic.py

Runs ``examples/classify_series.yaml`` and ``examples/classify_architectures.yaml`` unchanged (the same
as ``defectlab classify run EXAMPLE --out bench/results/tmp/<name>``) and writes
``bench/results/classify_magnetic.json``: per attempt the test accuracy, balanced accuracy, macro-F1,
per-class recall, weights, epochs, training seconds. Re-running resumes (finished attempts are skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from defectlab.classify.experiment import load_experiment, run_experiment
from defectlab.config import write_json

BENCH = Path(__file__).resolve().parent
EXAMPLES = BENCH.parent / "examples"
KEEP = ("attempt", "changed", "model", "weights", "epochs_run", "convergence_epoch", "best_val_acc", "test_acc",
        "balanced_acc", "macro_f1", "per_class_recall", "never_predicted", "train_seconds", "params", "infer_ms",
        "n_train", "n_val", "n_test")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    ap.add_argument("examples", nargs="*", default=["classify_series", "classify_architectures"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict = {"threads": args.threads, "loadavg_start": os.getloadavg(), "experiments": {}}
    t0 = time.time()
    for name in args.examples:
        cfg = load_experiment(EXAMPLES / f"{name}.yaml")
        rows = run_experiment(cfg, BENCH / "results" / "tmp" / name)
        out["experiments"][name] = {
            "command": f"defectlab classify run examples/{name}.yaml --out bench/results/tmp/{name}",
            "rows": [{k: r[k] for k in KEEP} for r in rows],
        }
    out.update(wall_seconds=time.time() - t0, loadavg_end=os.getloadavg())
    path = BENCH / "results" / "classify_magnetic.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    old_exps = old.get("experiments", {})
    out["experiments"] = {**old_exps, **out["experiments"]}
    write_json(path, out)
    for name, exp in out["experiments"].items():
        for r in exp["rows"]:
            print(f"{name:24s} {r['attempt']:24s} acc {r['test_acc']:.3f} bal {r['balanced_acc']:.3f} "
                  f"F1 {r['macro_f1']:.3f} ({r['weights']}, {r['epochs_run']} ep, {r['train_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
