"""Batch inspection of a folder: one CSV row per image, resumable, never stopped by one bad file.

* Rows are appended and flushed after every batch, so a killed run loses at most the batch in flight;
  re-running with the same CSV skips every image already listed (a half-written last line is dropped).
* An image that cannot be read gets a row with ``verdict=error`` and the reason; the run goes on.
  ``retry_errors=True`` drops those rows first and tries the files again.
* Decoding of the next batch overlaps with inference of the current one (a small thread pool).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from defectlab.anomaly.base import Prediction
from defectlab.config import atomic_path, atomic_write_text
from defectlab.data.io import is_image_file, load_pil
from defectlab.errors import BadInputError, ConfigError, DefectLabError
from defectlab.inspect.engine import Engine, load_engine
from defectlab.inspect.render import overlay

log = logging.getLogger(__name__)

COLUMNS = ("path", "verdict", "score", "threshold", "n_boxes", "boxes", "width", "height", "heatmap", "error")


@dataclass
class InspectSummary:
    csv: Path
    total: int  # image files found in the folder
    skipped: int  # already in the CSV (resume)
    inspected: int  # new rows with a verdict
    defects: int  # of those, verdict "defect"
    errors: int  # new rows with verdict "error"


def find_images(folder: Path, exclude: list[Path] = ()) -> list[Path]:  # type: ignore[assignment]
    """Image files under ``folder`` (recursive, sorted, hidden files and folders skipped)."""
    excl = [p.resolve() for p in exclude]
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not is_image_file(path):
            continue
        if any(path.resolve().is_relative_to(e) for e in excl):
            continue
        out.append(path)
    return out


def read_done(csv_path: Path, *, retry_errors: bool = False, columns: tuple[str, ...] = COLUMNS) -> set[str]:
    """Paths already listed in an existing results CSV; repairs a half-written last line."""
    if not csv_path.exists() or csv_path.stat().st_size == 0:
        return set()
    raw = csv_path.read_bytes()
    if not raw.endswith(b"\n"):  # killed mid-write: drop the partial row
        raw = raw[: raw.rfind(b"\n") + 1]
    text = raw.decode("utf-8", errors="replace")
    header = next(csv.reader(io.StringIO(text)), None)
    foreign = BadInputError(csv_path, f"exists but is not a defectlab inspect CSV (columns {header}); "
                                      "choose another --out or delete it")
    if header is None:
        if not ",".join(columns).encode().startswith(csv_path.read_bytes()):
            raise foreign
        atomic_write_text(csv_path, "")  # killed while writing the header: start afresh
        return set()
    if tuple(header) != columns:
        raise foreign
    rows = list(csv.DictReader(io.StringIO(text)))
    if retry_errors:
        rows = [r for r in rows if r["verdict"] != "error"]
    if retry_errors or len(raw) != csv_path.stat().st_size:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(csv_path, buf.getvalue())
    return {r["path"] for r in rows}


def _load(path: Path) -> Image.Image | str:
    """The decoded image, or the reason it cannot be used."""
    try:
        return load_pil(path, "RGB")
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop a production run
        return _reason(exc) if isinstance(exc, DefectLabError) else f"cannot read ({type(exc).__name__}: {exc})"


def _batches(items: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


def _heatmap_name(rel: str) -> str:
    return rel + ".heatmap.png"


def _row(rel: str, pred: Prediction | None, image: Image.Image | None, heatmap: str, error: str) -> dict:
    if pred is None:
        return {"path": rel, "verdict": "error", "error": error}
    boxes = [[int(v) for v in b] for b in pred.boxes]
    return {
        "path": rel, "verdict": "defect" if pred.is_defect else "good", "score": f"{pred.score:.6g}",
        "threshold": f"{pred.threshold:.6g}", "n_boxes": len(boxes), "boxes": json.dumps(boxes),
        "width": image.width if image else "", "height": image.height if image else "",
        "heatmap": heatmap, "error": "",
    } | _verdict_fields(pred)


def _verdict_fields(pred: Prediction) -> dict:
    """The extra columns of an inspection bundle (``defectlab.verdict``): type, its top-3 probabilities,
    the regions (box, score, type); empty for a plain anomaly run."""
    if "regions" not in pred.extra:
        return {}
    regions = [{k: r[k] for k in ("box", "score", "type")} for r in pred.extra["regions"]]
    return {"type": pred.extra.get("type") or "", "probabilities": json.dumps(pred.extra.get("probabilities", {})),
            "regions": json.dumps(regions)}


def _predict(engine: Engine, images: list[Image.Image]) -> list[Prediction | str]:
    """Predict a batch; if the batch fails, isolate the failing images one by one."""
    try:
        return list(engine.predict_images(images, batch_size=len(images)))
    except Exception as exc:  # noqa: BLE001 - one odd image must not stop a production run
        if len(images) == 1:
            return [_reason(exc)]
    out: list[Prediction | str] = []
    for im in images:
        try:
            out.append(engine.predict_images([im], batch_size=1)[0])
        except Exception as exc:  # noqa: BLE001
            out.append(_reason(exc))
    return out


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DefectLabError):
        return getattr(exc, "problem", str(exc))
    return f"inference failed ({type(exc).__name__}: {exc})"


def inspect_folder(
    run: str | Path | Engine,
    folder: str | Path,
    out: str | Path,
    *,
    heatmaps: str | Path | None = None,
    batch_size: int = 8,
    engine: str = "torch",
    retry_errors: bool = False,
    progress: bool = True,
) -> InspectSummary:
    """Inspect every image under ``folder`` with a fitted run (or an already loaded engine); rows go to
    the CSV ``out`` (appended: resumable). With ``heatmaps``, an overlay PNG per image goes there."""
    folder, out = Path(folder), Path(out)
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if not folder.is_dir():
        raise BadInputError(folder, "not a folder")
    heat_dir = Path(heatmaps) if heatmaps is not None else None
    images = find_images(folder, exclude=[heat_dir] if heat_dir else [])
    model = load_engine(run, engine) if isinstance(run, (str, Path)) else run
    columns = COLUMNS + tuple(getattr(model, "extra_columns", ()))  # a verdict bundle adds its columns
    done = read_done(out, retry_errors=retry_errors, columns=columns)
    todo = [p for p in images if p.relative_to(folder).as_posix() not in done]
    summary = InspectSummary(out, len(images), len(images) - len(todo), 0, 0, 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not out.exists() or out.stat().st_size == 0
    with open(out, "a", newline="", encoding="utf-8") as fh, ThreadPoolExecutor(2) as pool, \
            tqdm(total=len(todo), desc="inspect", unit="img", disable=not progress) as bar:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n", restval="")
        if new_file:
            writer.writeheader()
            fh.flush()
        batches = list(_batches(todo, batch_size))
        pending: list[Future] = [pool.submit(_load, p) for p in batches[0]] if batches else []
        for i, batch in enumerate(batches):
            loaded = [f.result() for f in pending]
            if i + 1 < len(batches):  # decode the next batch while this one runs
                pending = [pool.submit(_load, p) for p in batches[i + 1]]
            ok = [(p, im) for p, im in zip(batch, loaded, strict=True) if isinstance(im, Image.Image)]
            preds = _predict(model, [im for _, im in ok]) if ok else []
            results = dict(zip([p for p, _ in ok], zip([im for _, im in ok], preds, strict=True), strict=True))
            rows = []
            for path, im in zip(batch, loaded, strict=True):
                rel = path.relative_to(folder).as_posix()
                if not isinstance(im, Image.Image):
                    rows.append(_row(rel, None, None, "", im))
                    continue
                image, pred = results[path]
                if isinstance(pred, str):
                    rows.append(_row(rel, None, None, "", pred))
                    continue
                heat = ""
                if heat_dir is not None:
                    target = heat_dir / _heatmap_name(rel)
                    with atomic_path(target) as tmp:
                        overlay(image, pred).save(tmp, format="PNG")
                    heat = str(target)
                rows.append(_row(rel, pred, image, heat, ""))
            writer.writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())
            for r in rows:
                if r["verdict"] == "error":
                    summary.errors += 1
                    log.warning("%s: %s", folder / r["path"], r["error"])
                else:
                    summary.inspected += 1
                    summary.defects += r["verdict"] == "defect"
            bar.update(len(batch))
    return summary
