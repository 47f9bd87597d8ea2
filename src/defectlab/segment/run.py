"""Run folders of ``defectlab segment``: fit writes, test and predict read.

``RUN/config.yaml`` (resolved config + data source), ``RUN/split.json`` (train/test images),
``RUN/model.pt`` (atomic checkpoint), ``RUN/history.json``; ``test`` adds ``RUN/metrics.json`` and
``RUN/overlays/``; ``predict`` writes masks, overlays and ``predictions.json`` to its own folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from defectlab import distributed
from defectlab.config import load_yaml, write_json, write_yaml
from defectlab.data.dataset import load_pair
from defectlab.data.index import GOOD, SampleRecord
from defectlab.data.io import is_image_file, load_pil
from defectlab.data.regions import components, mask_box
from defectlab.errors import BadInputError
from defectlab.export.items import open_source
from defectlab.report.overlays import mask_overlay
from defectlab.segment.evaluate import evaluate_maps
from defectlab.segment.model import SegConfig, Segmenter
from defectlab.segment.split import segmentation_split

log = logging.getLogger(__name__)
MODEL_FILE = "model.pt"


def _rec_dict(r: SampleRecord) -> dict[str, Any]:
    return {"path": str(r.path), "split": r.split, "defect_type": r.defect_type,
            "mask_path": str(r.mask_path) if r.mask_path else None}


def _rec(d: dict[str, Any]) -> SampleRecord:
    mask = Path(d["mask_path"]) if d["mask_path"] else None
    return SampleRecord(Path(d["path"]), d["split"], d["defect_type"], mask)


def fit_run(data: str | Path, out: str | Path, config: SegConfig, *,
            manifest: str | Path | None = None, device: str = "auto") -> Segmenter:
    """Split, train, save. Under ``torchrun`` every process trains its share (DDP) and process 0 alone
    writes the run folder."""
    out = Path(out)
    env = distributed.setup(device)
    try:
        index = open_source(data, manifest)
        split = segmentation_split(index, test_fraction=config.test_fraction, seed=config.seed,
                                   max_good_train=config.max_good_train)
        if env.is_rank0:
            write_yaml(out / "config.yaml", {"data": str(Path(data).resolve()), "segment": config,
                                             "manifest": str(manifest) if manifest else None})
            write_json(out / "split.json", {k: [_rec_dict(r) for r in v] for k, v in split.items()})
        seg = Segmenter(config).fit(split["train"], index.defect_types, device=device)
        if env.is_rank0:
            seg.save(out / MODEL_FILE)
            write_json(out / "history.json", seg.history_)
        distributed.barrier(env)  # the run folder is complete when any process returns
    finally:
        distributed.teardown()
    return seg


def load_run(run: str | Path, device: str = "auto") -> tuple[Segmenter, dict[str, Any]]:
    run = Path(run)
    if not (run / MODEL_FILE).is_file():
        raise BadInputError(run, f"not a segmentation run (no {MODEL_FILE}); "
                                 "make one with 'defectlab segment fit'")
    cfg = load_yaml(run / "config.yaml") if (run / "config.yaml").is_file() else {}
    return Segmenter.load(run / MODEL_FILE, device=device), cfg


def test_records(run: Path, cfg: dict[str, Any], data: str | Path | None) -> list[SampleRecord]:
    """The run's held-out images, or the ``test`` split (else every image) of another dataset."""
    if data is None or str(Path(data).resolve()) == cfg.get("data"):
        split_file = run / "split.json"
        if not split_file.is_file():
            raise BadInputError(run, "split.json missing: give DATA to test on")
        return [_rec(d) for d in json.loads(split_file.read_text())["test"]]
    index = open_source(data)
    recs = index.select(split="test") or index.records
    return [r for r in recs if r.defect_type == GOOD or r.mask_path is not None]


def is_anomaly_run(run: str | Path) -> bool:
    return (Path(run) / "detector.json").is_file()


def evaluate_anomaly_run(run: str | Path, records: list[SampleRecord], *, threshold: float | None = None,
                     out: str | Path | None = None, batch_size: int = 8) -> dict[str, Any]:
    """A good-only detector's anomaly maps, thresholded at its deployable pixel threshold (or
    ``threshold``), through the same evaluation as the U-Net; written to ``RUN/localisation.json``."""
    from defectlab.anomaly.detector import Detector

    det = Detector.load(run)
    thr = det.thresholds.pixel if threshold is None else float(threshold)
    maps, masks = [], []
    for i in tqdm(range(0, len(records), batch_size), desc="anomaly maps", leave=False):
        chunk = records[i : i + batch_size]
        preds = det.predict_images([r.path for r in chunk], batch_size=batch_size)
        for r, p in zip(chunk, preds, strict=True):
            maps.append(np.asarray(p.anomaly_map, dtype=np.float32))
            masks.append(load_pair(r, "L")[1])
    metrics = evaluate_maps(maps, records, thr, masks=masks)
    metrics.update(method=det.method, run=str(run), threshold_rule=det.thresholds.rule if threshold is None
                   else "given on the command line")
    dest = Path(out) if out else Path(run) / "localisation.json"
    metrics["written"] = str(dest)
    write_json(dest, metrics)
    return metrics


def evaluate_run(run: str | Path, data: str | Path | None = None, *, n_overlays: int = 4,
             split_from: str | Path | None = None, threshold: float | None = None,
             batch_size: int = 8, device: str = "auto") -> dict[str, Any]:
    """Evaluate a segmentation run, or an anomaly run (``detector.json``) on the same footing.

    Images: ``split_from`` (a segmentation run: its held-out images, so both methods see the same ones),
    else the run's own held-out images, else DATA's test split."""
    run = Path(run)
    if is_anomaly_run(run):
        if split_from is not None:
            records = test_records(Path(split_from), {}, None)
        elif data is not None:
            records = test_records(run, {}, data)
        else:
            raise BadInputError(run, "an anomaly run needs DATA or --split-from SEGMENT_RUN to test on")
        return evaluate_anomaly_run(run, records, threshold=threshold)
    seg, cfg = load_run(run, device)
    records = test_records(Path(split_from), {}, None) if split_from else test_records(run, cfg, data)
    if not records:
        raise BadInputError(run, "no test images")
    probs, masks = [], []
    shown: dict[str, int] = {}
    for i in tqdm(range(0, len(records), batch_size), desc="segment test", leave=False):
        chunk = records[i : i + batch_size]
        pairs = [load_pair(r) for r in chunk]
        chunk_probs = seg.predict_proba([p[0] for p in pairs])
        for r, (image, mask), prob in zip(chunk, pairs, chunk_probs, strict=True):
            probs.append(prob)
            masks.append(mask)
            if shown.get(r.defect_type, 0) < n_overlays:
                shown[r.defect_type] = shown.get(r.defect_type, 0) + 1
                dest = run / "overlays" / r.defect_type / f"{r.path.stem}.png"
                dest.parent.mkdir(parents=True, exist_ok=True)
                mask_overlay(image, prob.max(axis=0) > seg.config.threshold, mask).save(dest)
    multi = seg.config.mode == "multi"
    metrics = evaluate_maps([p.max(axis=0) for p in probs], records, seg.config.threshold, masks=masks,
                            class_maps=probs if multi else None, classes=seg.classes_ if multi else None)
    metrics.update(method=f"unet-{seg.config.encoder}-{seg.config.mode}", run=str(run))
    metrics["written"] = str(run / "metrics.json")
    write_json(run / "metrics.json", metrics)
    return metrics


def _image_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if is_image_file(f) and not f.stem.endswith("_mask"))
        elif p.is_file():
            files.append(p)
        else:
            raise BadInputError(p, "file or folder not found")
    if not files:
        raise BadInputError(paths[0] if paths else Path("."), "no images found")
    return files


def predict_run(run: str | Path, images: list[Path], out: str | Path,
                device: str = "auto") -> list[dict[str, Any]]:
    seg, _ = load_run(run, device)
    out = Path(out)
    results = []
    for f in tqdm(_image_files(images), desc="segment predict", leave=False):
        image = load_pil(f)
        prob = seg.predict_proba([image])[0]
        mask = prob.max(axis=0) > seg.config.threshold
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{f.stem}_mask.png")
        mask_overlay(image, mask).save(out / f"{f.stem}_overlay.png")
        regions = []
        for comp in components(mask):
            x, y, w, h = mask_box(comp)
            entry: dict[str, Any] = {"box_xywh": [x, y, w, h], "area": int(comp.sum())}
            if seg.config.mode == "multi":
                entry["defect_type"] = seg.classes_[int(np.argmax(prob[:, comp].mean(axis=1)))]
            regions.append(entry)
        results.append({"path": str(f), "defect_pixels": int(mask.sum()), "is_defect": bool(mask.any()),
                        "regions": regions})
    write_json(out / "predictions.json", results)
    return results


__all__ = ["fit_run", "load_run", "predict_run", "evaluate_run"]
