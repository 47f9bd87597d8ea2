"""The Markdown report of an anomaly-detection run: setup, thresholds, metrics per defect type, overlays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLUMNS = [("n_images", "images"), ("n_defect", "defects"), ("image_auroc", "image AUROC"),
           ("pixel_auroc", "pixel AUROC"), ("pixel_aupro", "AUPRO@0.3"), ("image_f1_max", "image F1-max"),
           ("pixel_f1_max", "pixel F1-max"), ("deployable_recall", "recall @deploy thr"),
           ("deployable_false_alarm_rate", "false alarms @deploy thr")]


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: one row per group ("all" first, then each defect type vs. the good images)."""
    head = "| defect type | " + " | ".join(c[1] for c in COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(COLUMNS)
    rows = [f"| {name} | " + " | ".join(_fmt(m.get(k)) for k, _ in COLUMNS) + " |"
            for name, m in metrics.items() if isinstance(m, dict)]
    return "\n".join([head, sep, *rows])


def anomaly_report(*, info: dict[str, Any], metrics: dict[str, Any], timing: dict[str, Any],
                   overlays: list[Path], run_dir: Path, data: str) -> str:
    t = info["thresholds"]
    lines = [
        f"# Anomaly detection report: {info['method']} on {Path(data).name}",
        "",
        f"- data: `{data}`; fitted on {info['training'].get('n_fit', '?')} good images "
        f"({info['training'].get('fit_seconds', '?')} s)",
        f"- method: **{info['method']}**, backbone `{info.get('backbone')}`, weights: {info.get('weights')}",
        f"- input: {info['image_size'][0]}x{info['image_size'][1]}, resize `{info['resize']}`",
        f"- model: {info.get('model')}",
        f"- deployable thresholds: image **{t['image']:.4g}**, pixel {t['pixel']:.4g} ({t['rule']})",
        f"- F1-optimal threshold on this test set (reporting only): image "
        f"{_fmt(t.get('image_f1'))}, pixel {_fmt(t.get('pixel_f1'))}",
        f"- inference: {timing.get('ms_per_image', float('nan')):.1f} ms per image "
        f"(batch {timing.get('batch_size', '?')}, CPU threads {timing.get('threads', '?')})",
        "",
        "Higher score = more anomalous. Metrics per defect type compare that type with the good test images.",
        "Pixel metrics are computed at each image's original size; AUPRO is the MVTec AD per-region overlap "
        "integrated to FPR 0.3 and normalised.",
        "",
        "## Metrics",
        "",
        metrics_table(metrics),
        "",
    ]
    if overlays:
        lines += ["## Heatmaps", "", "image | ground truth | anomaly map | predicted contour", ""]
        lines += [f"![{p.stem}]({p.relative_to(run_dir).as_posix()})" for p in overlays]
        lines.append("")
    return "\n".join(lines)
