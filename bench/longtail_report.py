"""Markdown tables of the long-tail benchmark from bench/results/longtail_<dataset>.json.

    python bench/longtail_report.py neu magnetic_tile
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _pm(s: dict | None, scale: float = 100.0) -> str:
    return "—" if s is None else f"{scale * s['mean']:.1f} ± {scale * s['std']:.1f}"


def table(dataset: str) -> str:
    r = json.loads((RESULTS / f"longtail_{dataset}.json").read_text())
    counts = r["train_counts"]
    classes = sorted(counts, key=lambda c: -counts[c])
    head = ["method", "balanced acc", "macro-F1", "many", "medium", "few"] + [f"{c} ({counts[c]})" for c in classes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ce = r["summary"]["ce"]["balanced_accuracy"]["mean"]
    for name, s in sorted(r["summary"].items(), key=lambda kv: -kv[1]["balanced_accuracy"]["mean"]):
        gain = 100 * (s["balanced_accuracy"]["mean"] - ce)
        ba = _pm(s["balanced_accuracy"]) + ("" if name == "ce" else f" ({gain:+.1f})")
        row = [f"**{name}**" if name == r["best_method"] else name, ba, _pm(s["macro_f1"])]
        row += [_pm(s["shot_accuracy"][g]) for g in ("many", "medium", "few")]
        row += [f"{100 * s['per_class_recall'][c]['mean']:.0f}" for c in classes]
        lines.append("| " + " | ".join(row) + " |")
    load = ", ".join(f"{x:.1f}" for x in r["loadavg"])
    meta = (f"`{r['command']}` — {r['backbone']}; head {r['head']}, {r['epochs']} epochs, batch {r['batch']}; "
            f"seeds {r['seeds']}; train counts {counts}; test counts {r['test_counts']}; "
            f"{r['seconds_total'] / 60:.0f} min total, load average at the end {load} (2 shared cores).")
    return meta + "\n\n" + "\n".join(lines)


def main(argv: list[str]) -> int:
    for d in argv or ["neu", "magnetic_tile"]:
        print(f"### {d}\n\n{table(d)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
