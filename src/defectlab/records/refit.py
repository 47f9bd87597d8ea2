"""Closing the loop: the reviewed records as an MVTec dataset, and a detector fitted on it with the
settings of an existing run (its ``config.yaml``); later records carry the new model's version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defectlab.config import from_dict, load_yaml, to_dict, write_yaml
from defectlab.errors import BadInputError
from defectlab.records.export import export_dataset
from defectlab.records.recorder import model_version
from defectlab.records.store import RecordStore


def refit(store: RecordStore, like: str | Path, out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Export the reviewed items to ``OUT/dataset`` and fit a detector there (``OUT`` is the new run)."""
    from defectlab.anomaly.runner import RunConfig, fit_detector

    like, out = Path(like), Path(out)
    cfg_path = like / "config.yaml"
    if not cfg_path.is_file():
        raise BadInputError(like, "not a fitted run folder (no config.yaml): give the run to take settings from")
    summary = export_dataset(store, out / "dataset", progress=progress)
    if not summary["per_label"].get("good"):
        raise BadInputError(store.where, "no reviewed part confirmed good yet: nothing to fit a detector on")
    cfg = from_dict(RunConfig, {**load_yaml(cfg_path), "data": str(out / "dataset")}, where=str(cfg_path))
    det = fit_detector(cfg)
    det.save(out)
    write_yaml(out / "config.yaml", to_dict(cfg))
    return {"run": str(out), "dataset": summary, "model_version": model_version(det)}
