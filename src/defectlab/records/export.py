"""Getting records out: a table (CSV or Parquet) and the reviewed items as a dataset (MVTec or COCO).

MVTec layout (what ``anomaly fit``, the few-shot refinement and ``classify`` read): confirmed-good
parts go to ``train/good``, confirmed defects to ``test/<type>`` with a mask in
``ground_truth/<type>/<stem>_mask.png``
(the union of the reviewed regions: a box, or the anomaly map above its threshold inside the box).
The same image recorded twice (same sha256) is written once, with its latest review.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from defectlab.config import atomic_path, write_json
from defectlab.errors import ConfigError
from defectlab.records.store import COLUMNS, RecordFilter, RecordStore

TABLE_FORMATS = ("csv", "parquet")
DATASET_FORMATS = ("mvtec", "coco")
JSON_COLUMNS = ("boxes", "regions", "type_top", "review_regions")


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v) if k in JSON_COLUMNS and v is not None else v) for k, v in row.items()}


def export_table(
    store: RecordStore, out: str | Path, f: RecordFilter = RecordFilter(), *, fmt: str | None = None
) -> int:
    """Write the matching records (oldest first) to ``out``; the format follows the suffix unless given."""
    out = Path(out)
    fmt = fmt or ("parquet" if out.suffix.lower() == ".parquet" else "csv")
    if fmt not in TABLE_FORMATS:
        raise ConfigError(f"unknown table format '{fmt}'; known: {', '.join(TABLE_FORMATS)}")
    n = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if fmt == "csv":
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
                writer.writeheader()
                for chunk in store.iter_rows(f):
                    writer.writerows(_flat(r) for r in chunk)
                    n += len(chunk)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            writer = None
            for chunk in store.iter_rows(f):
                table = pa.Table.from_pylist([_flat(r) for r in chunk], schema=_schema())
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                n += len(chunk)
            if writer is None:
                pq.write_table(pa.Table.from_pylist([], schema=_schema()), tmp)
            else:
                writer.close()
    return n


def _schema():  # type: ignore[no-untyped-def]
    import pyarrow as pa

    types = {
        "id": pa.int64(),
        "width": pa.int32(),
        "height": pa.int32(),
        "version": pa.int32(),
        "score": pa.float64(),
        "threshold": pa.float64(),
        "type_prob": pa.float64(),
        "latency_ms": pa.float64(),
        "priority": pa.float64(),
    }
    return pa.schema([(c, types.get(c, pa.string())) for c in COLUMNS])


def _reviewed(store: RecordStore) -> list[dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for chunk in store.iter_rows(RecordFilter(reviewed=True)):
        for r in chunk:
            prev = latest.get(r["image_sha256"])
            if prev is None or (r["reviewed_at"], r["id"]) > (prev["reviewed_at"], prev["id"]):
                latest[r["image_sha256"]] = r
    return sorted(latest.values(), key=lambda r: r["id"])


def review_mask(store: RecordStore, row: dict[str, Any]) -> np.ndarray:
    """The reviewed regions of one record as a boolean mask (height, width)."""
    mask = np.zeros((row["height"], row["width"]), dtype=bool)
    amap = None
    for reg in row["review_regions"] or []:
        x0, y0, x1, y1 = reg["box"]
        inside = np.zeros_like(mask)
        if reg.get("mask") == "map" and row["map_path"]:
            if amap is None:
                amap = np.asarray(Image.open(store.images.path(row["map_path"])).convert("L"))
                if amap.shape != mask.shape:
                    amap = np.asarray(Image.fromarray(amap).resize((row["width"], row["height"])))
            inside[y0:y1, x0:x1] = amap[y0:y1, x0:x1] >= 128
        if not inside.any():  # a box, or a map with nothing above threshold inside it
            inside[y0:y1, x0:x1] = True
        mask |= inside
    return mask


def _png(store: RecordStore, row: dict[str, Any]) -> bytes:
    src = store.images.path(row["image_path"])
    if src.suffix == ".png":
        return src.read_bytes()
    buf = io.BytesIO()
    Image.open(src).save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def export_dataset(
    store: RecordStore, out: str | Path, *, fmt: str = "mvtec", progress: bool = True
) -> dict[str, Any]:
    """Write the reviewed records as a dataset; returns counts (also in ``OUT/records_export.json``)."""
    if fmt not in DATASET_FORMATS:
        raise ConfigError(f"unknown dataset format '{fmt}'; known: {', '.join(DATASET_FORMATS)}")
    out = Path(out)
    rows = _reviewed(store)
    counts: dict[str, int] = {}
    items, categories = [], []
    for row in tqdm(rows, desc="export", unit="img", disable=not progress):
        name = f"{row['id']:08d}.png"
        label = "good" if row["review_label"] == "good" else row["review_type"]
        counts[label] = counts.get(label, 0) + 1
        if fmt == "mvtec":
            if label == "good":
                _write(out / "train" / "good" / name, _png(store, row))
                continue
            _write(out / "test" / label / name, _png(store, row))
            buf = io.BytesIO()
            Image.fromarray(review_mask(store, row).astype(np.uint8) * 255, "L").save(buf, format="PNG")
            _write(out / "ground_truth" / label / f"{row['id']:08d}_mask.png", buf.getvalue())
        else:
            items.append(_coco_item(store, row, name, label))
            if label != "good" and label not in categories:
                categories.append(label)
    if fmt == "coco" and items:
        from defectlab.export.coco import export_coco

        export_coco(items, sorted(categories), out, images="copy", segm="both")
    summary = {
        "format": fmt,
        "out": str(out),
        "images": len(rows),
        "per_label": counts,
        "record_ids": [r["id"] for r in rows],
    }
    write_json(out / "records_export.json", summary)
    return summary


def _coco_item(store: RecordStore, row: dict[str, Any], name: str, label: str):  # type: ignore[no-untyped-def]
    from defectlab.export.instances import mask_instances
    from defectlab.export.items import ExportItem

    instances = [] if label == "good" else mask_instances(review_mask(store, row), label)
    return ExportItem(
        store.images.path(row["image_path"]), name, row["width"], row["height"], "train", instances, label
    )
