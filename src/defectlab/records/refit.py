"""Closing the loop: the reviewed records as an MVTec dataset, and a detector fitted on it with the
settings of an existing run (its ``config.yaml``); later records carry the new model's version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from defectlab.config import from_dict, load_yaml, to_dict, write_yaml
from defectlab.errors import BadInputError
from defectlab.records.export import export_dataset
from defectlab.records.recorder import model_version
from defectlab.records.store import RecordStore


def run_settings(run: Path) -> dict[str, Any]:
    """The RunConfig keys of a fitted run: its ``config.yaml`` (``anomaly fit``), else what ``detector.json``
    records (method, options, input size, resize, standardisation)."""
    if (run / "config.yaml").is_file():
        return load_yaml(run / "config.yaml")
    if not (run / "detector.json").is_file():
        raise BadInputError(run, "not a fitted run folder (no config.yaml or detector.json)")
    meta = json.loads((run / "detector.json").read_text())
    pre = meta.get("preprocess", {})
    return {
        "model": meta["method"],
        "options": meta.get("config", {}),
        "image_size": pre.get("image_size", 256),
        "resize": pre.get("resize", "auto"),
        "standardize": pre.get("standardize", True),
    }


def refit(store: RecordStore, like: str | Path, out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Export the reviewed items to ``OUT/dataset`` and fit a detector there (``OUT`` is the new run)."""
    from defectlab.anomaly.runner import RunConfig, fit_detector

    like, out = Path(like), Path(out)
    settings = run_settings(like)
    summary = export_dataset(store, out / "dataset", progress=progress)
    if not summary["per_label"].get("good"):
        raise BadInputError(store.where, "no reviewed part confirmed good yet: nothing to fit a detector on")
    cfg = from_dict(RunConfig, {**settings, "data": str(out / "dataset")}, where=str(like))
    det = fit_detector(cfg)
    det.save(out)
    write_yaml(out / "config.yaml", to_dict(cfg))
    return {"run": str(out), "dataset": summary, "model_version": model_version(det)}
