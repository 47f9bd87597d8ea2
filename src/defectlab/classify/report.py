"""Results of attempts: test metrics, convergence epoch, the comparison table, learning curves, plots.

Definitions used in the comparison table:

* **epochs run**: epochs actually trained (early stopping may end an attempt before ``train.epochs``).
* **convergence epoch**: the first epoch whose validation loss has closed 95% of the gap between the
  first epoch's validation loss and the lowest one, i.e. the first ``e`` with
  ``val_loss[e] <= min + 0.05 * (val_loss[1] - min)`` (1 when the first epoch is already the lowest).
* **best val loss / acc**: at the best epoch (the checkpoint chosen by ``train.monitor``), which is also
  the checkpoint evaluated on the test set.
* **test accuracy, balanced accuracy** (mean per-class recall), **macro-F1**, **per-class recall**,
  **never predicted** (test classes the model never output): on the test set with the best checkpoint.
* **train s**: seconds spent in training and validation epochs (image decoding excluded).
* **params**: all parameters of the model (trainable ones in ``trainable_params``).
* **infer ms/img**: mean wall time of a forward pass on one image (batch of 1, after a warm-up), on
  the training device, over up to 32 test images.

* **collapse**: an attempt whose test predictions are (nearly) one class: the most predicted class takes
  at least ``COLLAPSE_SHARE`` (90%) of the predictions while it is less than 80% of the true labels, or the
  balanced accuracy is within 10% of chance (1 / classes). Flagged per fold (``collapsed``,
  ``pred_share``, ``collapse_reason`` in ``result.json``), and per attempt as ``k/K folds`` in the table,
  ``collapsed_folds`` in the JSON and a warning in the log: a collapsed attempt never passes silently.

In k-fold mode every number is the mean over folds and ``<name>_std`` its (population) standard
deviation; the Markdown table prints ``mean ± std``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from defectlab.config import atomic_path, atomic_write_text, write_json

NUMERIC = ("epochs_run", "convergence_epoch", "best_val_loss", "best_val_acc", "test_acc", "balanced_acc",
           "macro_f1", "pred_share", "train_seconds", "params", "infer_ms")
COLLAPSE_SHARE = 0.9
TABLE = (("attempt", "attempt"), ("changed", "what it changed"), ("model", "model"), ("weights", "weights"),
         ("epochs_run", "epochs run"), ("convergence_epoch", "conv. epoch"), ("best_val_loss", "best val loss"),
         ("best_val_acc", "best val acc"), ("test_acc", "test acc"), ("balanced_acc", "balanced acc"),
         ("macro_f1", "macro-F1"), ("per_class_recall", "per-class recall"), ("never_predicted", "never predicted"),
         ("collapse", "collapse"),
         ("train_seconds", "train s"), ("params", "params"), ("infer_ms", "infer ms/img"))


def convergence_epoch(val_losses: list[float], fraction: float = 0.95) -> int:
    """First (1-based) epoch whose val loss closed ``fraction`` of the first-to-lowest gap."""
    if not val_losses:
        return 0
    low, first = min(val_losses), val_losses[0]
    limit = low + (1.0 - fraction) * (first - low)
    return next(i + 1 for i, v in enumerate(val_losses) if v <= limit)


@torch.inference_mode()
def inference_ms(model: torch.nn.Module, x: torch.Tensor, *, max_images: int = 32) -> float:
    """Mean ms per image of ``model(x[i:i+1])`` in eval mode, after one warm-up pass."""
    model.eval()
    n = min(max_images, len(x))
    if n == 0:
        return float("nan")
    model(x[:1])
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for i in range(n):
        model(x[i:i + 1])
    sync()
    return (time.perf_counter() - t0) * 1000.0 / n


def collapse_check(y_true: list[str], y_pred: list[str], classes: list[str],
                   balanced_acc: float) -> dict[str, Any]:
    """``{"collapsed", "pred_share", "collapse_reason"}`` of one fold's test predictions (module docstring)."""
    from collections import Counter

    pred = Counter(y_pred)
    top, n_top = max(pred.items(), key=lambda kv: (kv[1], kv[0])) if pred else ("", 0)
    share = n_top / max(1, len(y_pred))
    true_share = Counter(y_true)[top] / max(1, len(y_true))
    chance = 1.0 / max(1, len(classes))
    reason = ""
    if share >= COLLAPSE_SHARE and true_share < 0.8:
        reason = f"predicts '{top}' for {share:.0%} of the test images ({true_share:.0%} are)"
    elif balanced_acc <= 1.1 * chance:
        reason = f"balanced accuracy {balanced_acc:.2f} at chance ({chance:.2f})"
    return {"collapsed": bool(reason), "pred_share": share, "collapse_reason": reason}


def aggregate(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from per-fold rows: numbers become mean (plus ``_std``); per-class recall is averaged."""
    row = dict(folds[0])
    for key in NUMERIC:
        vals = np.asarray([f[key] for f in folds], dtype=float)
        row[key], row[key + "_std"] = float(vals.mean()), float(vals.std())
    classes = list(folds[0]["per_class_recall"])
    row["per_class_recall"] = {c: float(np.mean([f["per_class_recall"][c] for f in folds])) for c in classes}
    row["never_predicted"] = sorted({c for f in folds for c in f["never_predicted"]})
    row["folds"] = len(folds)
    row["collapsed_folds"] = sum(bool(f.get("collapsed")) for f in folds)
    row["collapsed"] = row["collapsed_folds"] > 0
    row["collapse_reason"] = "; ".join(f"{f['fold']}: {f['collapse_reason']}" for f in folds if f.get("collapsed"))
    return row


def _fmt(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if key == "per_class_recall":
        return ", ".join(f"{c} {v:.2f}" for c, v in value.items())
    if key == "never_predicted":
        return ", ".join(value) or "-"
    if key == "collapse":
        if not row.get("collapsed"):
            return "-"
        return f"**COLLAPSED** {row['collapsed_folds']}/{row['folds']} folds" if "folds" in row else "**COLLAPSED**"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if key in NUMERIC:
        digits = {"epochs_run": 1, "convergence_epoch": 1, "params": 0, "train_seconds": 1, "infer_ms": 2}.get(key, 3)
        text = f"{value:,.0f}" if key == "params" else f"{value:.{digits}f}"
        if key + "_std" in row and key != "params":
            text += f" ± {row[key + '_std']:.{digits}f}"
        elif key in ("epochs_run", "convergence_epoch"):
            text = str(int(value))
        return text
    return str(value)


def write_table(rows: list[dict[str, Any]], out: Path) -> None:
    """``comparison.md``, ``comparison.csv`` (one column per class for recall) and ``comparison.json``."""
    write_json(out / "comparison.json", rows)
    lines = ["| " + " | ".join(h for _, h in TABLE) + " |", "|" + "---|" * len(TABLE)]
    lines += ["| " + " | ".join(_fmt(r, k).replace("|", "/") for k, _ in TABLE) + " |" for r in rows]
    if rows:
        best = max(rows, key=lambda r: (r["balanced_acc"], r["macro_f1"]))
        lines += ["", f"Highest test balanced accuracy: **{best['attempt']}**."]
        lines += [f"**{r['attempt']} collapsed**: {r['collapse_reason']}." for r in rows if r.get("collapsed")]
    atomic_write_text(out / "comparison.md", "\n".join(lines) + "\n")
    classes = list(rows[0]["per_class_recall"]) if rows else []
    scalar = [k for k, _ in TABLE if k not in ("per_class_recall", "never_predicted", "collapse")]
    stds = [k + "_std" for k in NUMERIC if rows and k + "_std" in rows[0]]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(scalar + stds + [f"recall_{c}" for c in classes] + ["never_predicted", "collapsed"])
    for r in rows:
        w.writerow([r.get(k, "") for k in scalar + stds] + [r["per_class_recall"][c] for c in classes]
                   + [";".join(r["never_predicted"]), r.get("collapse_reason", "")])
    atomic_write_text(out / "comparison.csv", buf.getvalue())


def write_per_class(metrics: dict[str, Any], path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "support", "precision", "recall", "f1"])
    for c, m in metrics["per_class"].items():
        w.writerow([c, int(m["support"]), f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}"])
    atomic_write_text(path, buf.getvalue())


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")


def plot_confusion(cm: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    m = np.asarray(cm)
    fig = Figure(figsize=(1.0 + 0.7 * len(classes), 0.8 + 0.6 * len(classes)))
    ax = fig.subplots()
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center",
                    color="white" if m[i, j] > 0.6 * max(1, m.max()) else "black", fontsize=8)
    _save(fig, path)


def plot_curves(curves: dict[str, list[list[dict[str, float]]]], path: Path) -> None:
    """Val loss and val accuracy per epoch of every attempt (train loss dashed); folds are averaged."""
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for i, (name, folds) in enumerate(curves.items()):
        color = f"C{i % 10}"
        n = max(len(h) for h in folds)
        for key, ax, style in (("val_loss", ax_loss, "-"), ("train_loss", ax_loss, "--"), ("val_acc", ax_acc, "-")):
            ys = [float(np.mean([h[e][key] for h in folds if len(h) > e])) for e in range(n)]
            ax.plot(range(1, n + 1), ys, style, color=color, label=name if key != "train_loss" else None)
    ax_loss.set(xlabel="epoch", ylabel="loss (val solid, train dashed)", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="val accuracy", title="validation accuracy")
    ax_acc.legend(fontsize=8)
    _save(fig, path)


def load_rows(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())
