"""From a prediction to a record: the model version, the anomaly map kept as an 8-bit PNG, the optional
type / regions fields an inspection bundle adds in ``Prediction.extra``."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from defectlab.anomaly.base import Prediction
from defectlab.data.io import Decoded
from defectlab.inspect.version import engine_version
from defectlab.records.store import NewRecord


def model_version(engine: Any) -> str:
    """The engine's version string, the same one ``/inspect`` answers with (``defectlab.inspect.version``):
    a refit or a new threshold gives a new version."""
    return engine_version(engine)


MAP_SIDE = 64  # the stored map is reduced (box average) to this longer side, by 4 at most


def map_png(pred: Prediction) -> bytes:
    """The anomaly map as 8-bit grey: 128 = the pixel threshold, 255 = twice it (or more). Stored reduced by
    an integer factor (<= 4: the map is a Gaussian-smoothed field, sigma 4-8 px, so little is lost) and
    scaled back to the image where it is used: a quarter of the pixels or fewer to encode while the
    request waits, Huffman-coded after PNG's row filters (about twice as fast as zlib level 1, smaller)."""
    thr = float(pred.extra.get("pixel_threshold", pred.threshold)) or 1.0
    amap = np.ascontiguousarray(pred.anomaly_map, dtype=np.float32)
    factor = min(4, -(-max(amap.shape) // MAP_SIDE))  # ceil: the longer side at most MAP_SIDE, if <= 4x
    if factor > 1:
        amap = np.asarray(Image.fromarray(amap, "F").reduce(factor))
    grey = Image.fromarray(np.clip(amap * (128.0 / thr), 0, 255).astype(np.uint8), "L")
    buf = io.BytesIO()
    grey.save(buf, format="PNG", compress_level=1, compress_type=zlib.Z_HUFFMAN_ONLY)  # smooth: PNG filters
    return buf.getvalue()


def _type_fields(extra: dict[str, Any]) -> tuple[str | None, float | None, list[list[Any]] | None, Any]:
    dtype = extra.get("type")
    probs = extra.get("type_probs") or extra.get("type_top")
    top = None
    if isinstance(probs, dict):
        top = [[k, float(v)] for k, v in sorted(probs.items(), key=lambda kv: -float(kv[1]))[:3]]
    elif isinstance(probs, (list, tuple)):
        top = [[str(k), float(v)] for k, v in list(probs)[:3]]
    prob = extra.get("type_prob")
    if prob is None and top and dtype is not None:
        prob = next((p for k, p in top if k == dtype), None)
    regions = extra.get("regions")
    return (
        str(dtype) if dtype is not None else None,
        float(prob) if prob is not None else None,
        top,
        json.loads(json.dumps(regions, default=_jsonable)) if regions is not None else None,
    )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def from_prediction(
    pred: Prediction,
    image: bytes,
    name: str,
    width: int,
    height: int,
    *,
    version: str,
    latency_ms: float,
    source: str = "",
    origin: str = "cli",
    ext: str = ".png",
    keep_map: bool = True,
) -> NewRecord:
    dtype, prob, top, regions = _type_fields(pred.extra or {})
    return NewRecord(
        image_name=name,
        image=image,
        width=width,
        height=height,
        model_version=version,
        score=float(pred.score),
        threshold=float(pred.threshold),
        verdict="defect" if pred.is_defect else "good",
        latency_ms=latency_ms,
        source=source,
        origin=origin,
        boxes=[[int(v) for v in b] for b in pred.boxes],
        type=dtype,
        type_prob=prob,
        type_top=top,
        regions=regions,
        map_png=map_png(pred) if keep_map else None,
        image_ext=ext,
    )


def record_batch(
    store: Any,
    engine: Any,
    items: list[tuple[Path, str, Decoded, Prediction]],
    latency_ms: float,
    source: str = "",
) -> list[int]:
    """Record one ``inspect`` batch: (file, relative name, decoded image, prediction) per image."""
    version = engine_version(engine)
    recs = [
        from_prediction(
            pred,
            path.read_bytes(),
            rel,
            image.width,  # the file's own size (Decoded), also for an image reduced on load
            image.height,
            version=version,
            latency_ms=latency_ms,
            source=source,
            origin="cli",
            ext=path.suffix,
        )
        for path, rel, image, pred in items
    ]
    return store.record_many(recs)
