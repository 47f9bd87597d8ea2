"""Sanity check of the augmentation pipeline: does ``augment: basic`` help where it should?

    $VENV/bin/python bench/classify_augment_check.py

Synthetic textures (``defectlab.data.synthetic``, 64 px, 30 images per class: good + 4 defect types),
split 50/20/30 %, simple_cnn, 12 epochs, with ``augment: none`` and ``basic``. Written because basic
augmentation made the scratch models *worse* on magnetic_tile within 25 epochs (docs/benchmarks.md).
Writes ``bench/results/classify_augment_check.json``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import yaml

from defectlab.classify.experiment import load_experiment, run_experiment
from defectlab.config import write_json
from defectlab.data.synthetic import SynthConfig, make_synthetic

BENCH = Path(__file__).resolve().parent


def main() -> None:
    torch.set_num_threads(1)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        cat = make_synthetic(tmp, SynthConfig(kind="texture", size=64, n_train=2, n_test_good=30, n_per_defect=30))
        cfg = {"data": {"dataset": str(cat), "split": {"val": 0.2, "test": 0.3, "use_train_good": False}},
               "base": {"model": {"name": "simple_cnn"}, "train": {"epochs": 12, "image_size": 64}},
               "attempts": [{"name": "none"}, {"name": "basic", "train": {"augment": "basic"}}]}
        (Path(tmp) / "exp.yaml").write_text(yaml.safe_dump(cfg))
        rows = run_experiment(load_experiment(Path(tmp) / "exp.yaml"), Path(tmp) / "run", progress=False)
    out = {"command": "bench/classify_augment_check.py", "experiment": cfg | {"data": "synthetic texture 64 px"},
           "rows": [{k: r[k] for k in ("attempt", "test_acc", "balanced_acc", "macro_f1", "n_train", "n_test")}
                    | {"train_acc_per_epoch": [h["train_acc"] for h in r["history"]]} for r in rows],
           "loadavg_start": load0, "loadavg_end": os.getloadavg()}
    write_json(BENCH / "results" / "classify_augment_check.json", out)
    for r in out["rows"]:
        print(r["attempt"], round(r["test_acc"], 3), [round(a, 2) for a in r["train_acc_per_epoch"]])


if __name__ == "__main__":
    main()
