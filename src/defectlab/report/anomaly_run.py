"""Writing an anomaly run's evaluation: ``metrics.json``, ``scores.csv``, heatmap overlays and ``report.md``.

The runner (``defectlab.anomaly.runner``) fits and evaluates; this module turns an evaluation into the
files a person reads, so the anomaly package holds no report writing.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import torch

from defectlab.anomaly.detector import Detector
from defectlab.anomaly.runner import EvalResult, RunConfig, evaluate, evaluation_records
from defectlab.config import atomic_write_text, write_json
from defectlab.data.index import DatasetIndex
from defectlab.data.io import load_image
from defectlab.report.markdown import anomaly_report
from defectlab.report.overlays import save_overlay


def _overlay_sample(rows_types: list[str], n: int) -> list[int]:
    """Up to ``n`` indices spread round-robin over defect types (defects first, then good)."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(rows_types):
        groups.setdefault(t, []).append(i)
    order = sorted(groups, key=lambda t: (t == "good", t))
    picked: list[int] = []
    depth = 0
    while len(picked) < n and any(depth < len(groups[t]) for t in order):
        for t in order:
            if depth < len(groups[t]) and len(picked) < n:
                picked.append(groups[t][depth])
        depth += 1
    return picked


def write_evaluation(det: Detector, index: DatasetIndex, run: Path, cfg: RunConfig, *,
                     half: bool = False) -> EvalResult:
    """Evaluate on the test split and write the run's metrics.json, scores.csv, overlays/ and report.md;
    the F1-optimal thresholds are added to the saved detector.json (reporting only). ``half``: see
    ``runner.evaluate``."""
    records = evaluation_records(index)
    keep = _overlay_sample([r.defect_type for r in records], cfg.overlays)
    res = evaluate(det, records, batch_size=cfg.batch_size, keep=set(keep), half=half)
    overall = res.metrics.get("all", {})
    det.thresholds.image_f1 = overall.get("image_f1_threshold")
    det.thresholds.pixel_f1 = overall.get("pixel_f1_threshold")
    det.save(run, tensors=False)
    timing = {"ms_per_image": res.ms_per_image, "batch_size": cfg.batch_size, "threads": torch.get_num_threads(),
              "loadavg": list(os.getloadavg()), "device": str(det.model.device), "half": half}
    write_json(run / "metrics.json", {"data": str(index.root), "metrics": res.metrics, "timing": timing,
                                      "thresholds": det.info()["thresholds"]})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["path", "defect_type", "label", "score", "predicted_defect"])
    writer.writeheader()
    writer.writerows(res.rows)
    atomic_write_text(run / "scores.csv", buf.getvalue())
    paths: list[Path] = []
    if res.maps:
        maxima = [float(m.max()) for m in res.maps.values()]
        vmin = float(min(m.min() for m in res.maps.values()))
        vmax = max(float(np.percentile(maxima, 90)), det.thresholds.pixel, vmin + 1e-6)
        for i in keep:
            row = res.rows[i]
            name = f"{row['defect_type']}_{Path(row['path']).stem}.png"
            paths.append(save_overlay(run / "overlays" / name, load_image(row["path"], "RGB"), res.masks.get(i),
                                      res.maps[i], vmin=vmin, vmax=vmax, pixel_threshold=det.thresholds.pixel,
                                      title=f"{row['defect_type']}  score {row['score']:.3g}  "
                                            f"(threshold {det.thresholds.image:.3g})"))
    atomic_write_text(run / "report.md", anomaly_report(info=det.info(), metrics=res.metrics, timing=timing,
                                                        overlays=paths, run_dir=run, data=str(index.root)))
    return res
