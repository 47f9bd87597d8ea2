"""Defect types of magnetic_tile on grouped 5-fold (by physical tile): every attempt of the classic
series and the region-guided / probe / fine-tuning attempts of ``examples/classify_grouped.yaml``.

    nice $VENV/bin/python bench/classify_grouped.py [--part series|grouped|good] [--attempt NAME ...]

* ``grouped``: ``examples/classify_grouped.yaml`` unchanged (5 defect types, grouped 5-fold);
* ``series``: the attempts of ``examples/classify_series.yaml`` on the same grouped 5-fold, with
  ``--series-epochs`` (default 12) and patience 5 instead of the example's 25 / 8 (a shared 2-core CPU);
* ``good``: the probe attempts with ``good`` as a sixth class (the 237 test/good images, grouped by tile).

Runs land in ``bench/results/tmp/classify_grouped_<part>`` (re-running resumes); the summary (balanced
accuracy and macro-F1 mean ± std over folds, collapse flags, seconds) goes to
``bench/results/classify_grouped_<part>.json``.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import torch

from defectlab.classify.experiment import AttemptSpec, load_experiment, run_experiment
from defectlab.config import write_json

BENCH = Path(__file__).resolve().parent
EXAMPLES = BENCH.parent / "examples"
KEEP = ("attempt", "changed", "model", "weights", "folds", "balanced_acc", "balanced_acc_std", "macro_f1",
        "macro_f1_std", "test_acc", "test_acc_std", "per_class_recall", "never_predicted", "collapsed",
        "collapsed_folds", "collapse_reason", "pred_share", "epochs_run", "train_seconds", "infer_ms", "n_train",
        "n_val", "n_test")


def experiment(part: str, series_epochs: int):  # noqa: ANN201
    grouped = load_experiment(EXAMPLES / "classify_grouped.yaml")
    if part == "grouped":
        return grouped
    if part == "series":
        cfg = load_experiment(EXAMPLES / "classify_series.yaml")
        cfg.data = copy.deepcopy(grouped.data)
        cfg.base["train"].update(epochs=series_epochs, patience=5)
        cfg.name = "magnetic_tile_series_grouped"
        return cfg
    if part == "good":
        grouped.data.classes = []
        grouped.attempts = [a for a in grouped.attempts if a.train.get("probe") or
                            (a.based_on and "probe" in a.based_on)]
        grouped.attempts.insert(0, AttemptSpec("prototype_whole_good", description="prototype, whole image",
                                               train={"probe": "prototype"}))
        grouped.attempts = [a for a in grouped.attempts if a.name != "prototype_whole"]
        grouped.name = "magnetic_tile_grouped_with_good"
        return grouped
    raise SystemExit(f"unknown part {part}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="grouped", choices=["grouped", "series", "good"])
    ap.add_argument("--attempt", action="append", help="run only these attempts (repeatable)")
    ap.add_argument("--series-epochs", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table", action="store_true", help="only print the Markdown table of the results JSON")
    ap.add_argument("--collect", action="store_true",
                    help="write the results JSON from the attempts finished in the run folder (no training)")
    args = ap.parse_args()
    if args.table:
        import json

        print(markdown(json.loads((BENCH / "results" / f"classify_grouped_{args.part}.json").read_text())["rows"]))
        return
    torch.set_num_threads(args.threads)
    cfg = experiment(args.part, args.series_epochs)
    run = BENCH / "results" / "tmp" / f"classify_grouped_{args.part}"
    t0, load0 = time.time(), os.getloadavg()
    if args.collect:
        rows = collect(run, [a.name for a in cfg.attempts])
    else:
        rows = run_experiment(cfg, run, only=args.attempt, progress=False)
    path = BENCH / "results" / f"classify_grouped_{args.part}.json"
    old = {r["attempt"]: r for r in (__import__("json").loads(path.read_text())["rows"] if path.is_file() else [])}
    old.update({r["attempt"]: {k: r.get(k) for k in KEEP} for r in rows})
    write_json(path, {
        "command": f"nice python bench/classify_grouped.py --part {args.part}",
        "data": "magnetic_tile (../shared/data), grouped 5-fold by physical tile (magnetic_tile_tiles.csv): "
                "fold k tests, fold k+1 validates, three folds train",
        "classes": cfg.data.classes or "all (good + 5 defect types; good = the 237 test/good images)",
        "machine": "2-core CPU shared with other work (load average "
                   f"{load0[0]:.0f} at start): timings are not comparable across runs",
        "threads": args.threads, "wall_seconds_last_run": time.time() - t0,
        "rows": list(old.values()),
    })
    for r in old.values():
        flag = " COLLAPSED" if r["collapsed"] else ""
        print(f"{r['attempt']:24s} bal {r['balanced_acc']:.3f} ± {r['balanced_acc_std']:.3f}  "
              f"F1 {r['macro_f1']:.3f} ± {r['macro_f1_std']:.3f}  {r['train_seconds']:.0f} s{flag}")


def collect(run: Path, names: list[str]) -> list[dict]:
    """Rows of the attempts whose five folds have finished in ``run`` (aggregated as the experiment does)."""
    import json

    from defectlab.classify.report import aggregate

    rows = []
    for name in names:
        folds = sorted((run / name).glob("fold*/result.json"))
        if len(folds) == 5:
            rows.append(aggregate([json.loads(f.read_text()) for f in folds]))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| attempt | what it changed | balanced accuracy | macro-F1 | collapse | train s (5 folds) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        flag = f"**COLLAPSED** {r['collapsed_folds']}/{r['folds']}" if r["collapsed"] else "-"
        lines.append(f"| {r['attempt']} | {r['changed']} | {r['balanced_acc']:.3f} ± {r['balanced_acc_std']:.3f} | "
                     f"{r['macro_f1']:.3f} ± {r['macro_f1_std']:.3f} | {flag} | {5 * r['train_seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
