"""The linear probe's L2 penalty and feature standardisation on magnetic_tile's grouped 5-fold.

    nice $VENV/bin/python bench/classify_probe_l2.py [--attempt pooled_probe --attempt lite0_probe_whole]

For each named attempt of ``examples/classify_grouped.yaml``, the frozen features of every image and its three
flips are extracted once (as the probe does); then, on the benchmark's own folds (fold k tests, fold k+1
validates, three folds train), the linear probe (``defectlab.classify.probe.fit_linear``, flip TTA at test)
is fitted for each L2 of a grid, on raw and on standardised features (training mean/std), and the
balanced accuracy is reported as mean ± std over the folds; ``val_selected`` picks the L2 per fold by the
validation fold's balanced accuracy (no test fold involved). Writes ``bench/results/classify_probe_l2.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from defectlab.classify.data import ExperimentCache
from defectlab.classify.experiment import load_experiment, load_folds, resolve_attempts
from defectlab.classify.probe import features, fit_linear
from defectlab.classify.train import build_setup
from defectlab.config import write_json
from defectlab.metrics.classification import classification_metrics

BENCH = Path(__file__).resolve().parent
GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def balanced(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> float:
    pred = logits.softmax(-1).mean(1).argmax(1)  # the mean softmax over the TTA views
    names = [classes[i] for i in labels.tolist()], [classes[i] for i in pred.tolist()]
    return classification_metrics(*names, labels=classes)["balanced_accuracy"]


def sweep(name: str) -> dict:
    cfg = load_experiment(BENCH.parent / "examples" / "classify_grouped.yaml")
    attempt = {a.name: a for a in resolve_attempts(cfg)}[name]
    classes, folds, _ = load_folds(cfg.data)
    records = {str(r.path): r for f in folds for s in (f.train, f.val, f.test) for r in s}
    cache = ExperimentCache(list(records.values()), classes)
    data = cache.subset([records[p] for p in sorted(records)], attempt.train)
    setup = build_setup(attempt.model, attempt.train, classes, [1] * len(classes))
    setup.classifier.freeze("all")
    t0 = time.perf_counter()
    feats = features(setup, data.images, batch_size=32, device=torch.device("cpu"), flips=True)
    feats = feats.view(len(data), 4, -1)
    seconds = time.perf_counter() - t0
    pos = {p: i for i, p in enumerate(data.paths)}
    scores: dict[str, dict[float, list[float]]] = {"raw": {}, "standardised": {}}
    picked: dict[str, list[float]] = {"raw": [], "standardised": []}
    for fold in folds:
        ix = {s: torch.tensor([pos[str(r.path)] for r in getattr(fold, s)]) for s in ("train", "val", "test")}
        x = feats[ix["train"]].flatten(0, 1)
        y = data.labels[ix["train"]].repeat_interleave(4)
        for kind in scores:
            mu, sd = (x.mean(0), x.std(0).clamp(min=1e-6)) if kind == "standardised" else (0.0, 1.0)
            val = {}
            for l2 in GRID:
                w, b = fit_linear((x - mu) / sd, y, len(classes), l2=l2)
                ba = {s: balanced(((feats[ix[s]][:, :3] - mu) / sd) @ w.T + b, data.labels[ix[s]], classes)
                      for s in ("val", "test")}
                scores[kind].setdefault(l2, []).append(ba["test"])
                val[l2] = ba
            best = max(GRID, key=lambda l2: val[l2]["val"])
            picked[kind].append(val[best]["test"])
    summary = {kind: {str(l2): [round(float(np.mean(v)), 3), round(float(np.std(v)), 3)]
                      for l2, v in s.items()} for kind, s in scores.items()}
    for kind in picked:
        summary[kind]["val_selected"] = [round(float(np.mean(picked[kind])), 3),
                                         round(float(np.std(picked[kind])), 3)]
    return {"attempt": name, "changed": attempt.changed, "feature_seconds": round(seconds, 1),
            "balanced_acc_mean_std": summary}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--attempt", action="append", help="examples/classify_grouped.yaml attempts (repeatable)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    rows = []
    for name in args.attempt or ["pooled_probe", "lite0_probe_whole"]:
        rows.append(sweep(name))
        print(rows[-1], flush=True)
    write_json(BENCH / "results" / "classify_probe_l2.json", {
        "command": "nice python bench/classify_probe_l2.py",
        "data": "magnetic_tile five defect types, grouped 5-fold by tile (examples/classify_grouped.yaml): "
                "fold k tests, fold k+1 validates, three folds train",
        "grid": list(GRID),
        "machine": f"2-core CPU shared with other work (load average {load0[0]:.0f} at start)",
        "rows": rows,
    })


if __name__ == "__main__":
    main()
