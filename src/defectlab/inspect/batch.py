"""Batch inspection of a folder: one CSV row per image, resumable, never stopped by one bad file.

* Rows are appended and flushed after every batch, so a killed run loses at most the batch in flight;
  re-running with the same CSV skips every image already listed (a half-written last line is dropped).
* An image that cannot be read, is over a limit (``defectlab.data.io.decode_for_model``: the file's pixel
  limit and the model's own) or fails in the engine gets a row with ``verdict=error`` and the reason; the
  rest of its batch and the run go on. ``retry_errors=True`` drops those rows first and tries again.
* ``<csv>.inflight`` names the images being decoded and scored; a run killed by one of them (out of
  memory, a crashing decoder) is not killed again: see ``InFlight``.
* Decoding of the next batch overlaps with inference of the current one (a small thread pool).
* ``executor="ray"`` scores the same batches on a Ray actor pool instead (``defectlab.inspect.executors``);
  rows are written in the same order, so the CSV is the same.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from defectlab.config import atomic_path, atomic_write_text
from defectlab.data.io import DEFAULT_MAX_PIXELS, Decoded, decode_for_model, is_image_file
from defectlab.errors import BadInputError, ConfigError, DefectLabError
from defectlab.inspect.engine import Engine, load_engine
from defectlab.inspect.executors import UnitJob, check_executor, ray_unit_rows
from defectlab.inspect.render import overlay
from defectlab.runtime.prediction import Prediction

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
    engine_errors: int = 0  # of those, failures of the engine rather than of the image

    @property
    def failed(self) -> str | None:
        """Why the run should count as failed (engine errors, or every new image failed), else None."""
        if self.engine_errors:
            return (f"{self.engine_errors} image(s) failed inside the inference engine (not a bad image: see "
                    "the log and the CSV's error column; --retry-errors tries them again)")
        if self.errors and not self.inspected:
            return f"every image failed ({self.errors} error rows in {self.csv})"
        return None


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


def _load(model: Engine, path: Path, max_pixels: int) -> Decoded | str:
    """The image decoded for the model (reduced on load when large), or the reason it cannot be used."""
    try:
        if hasattr(model, "decode_full"):
            return model.decode_full(path, max_pixels=max_pixels)
        return decode_for_model(path, max_pixels=max_pixels)
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop a production run
        return _reason(exc) if isinstance(exc, DefectLabError) else \
            f"cannot read ({type(exc).__name__}: {exc})"


def _batches(items: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


def _heatmap_name(rel: str) -> str:
    return rel + ".heatmap.png"


def _row(rel: str, pred: Prediction | None, image: Decoded | None, heatmap: str, error: str) -> dict:
    """One CSV row (every column is built here)."""
    if pred is None:
        return dict.fromkeys(COLUMNS, "") | {"path": rel, "verdict": "error", "error": error}
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


ENGINE_FAILURE = "inference failed"  # rows whose error starts so: the engine failed, not the image


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DefectLabError):
        return getattr(exc, "problem", str(exc))
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{ENGINE_FAILURE} ({type(exc).__name__}: {first})"


class InFlight:
    """``<csv>.inflight``: the images being decoded or scored right now. A run that is killed (out of memory,
    a crashing decoder) leaves it behind; the next run takes those images one at a time, and an image that
    was alone in flight when the run died becomes an error row instead of being tried again."""

    def __init__(self, csv_path: Path) -> None:
        self.path = csv_path.with_name(csv_path.name + ".inflight")

    def left_behind(self) -> tuple[list[str], bool]:
        """(paths, alone) from a run that died; ([], False) when the last run ended normally."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return [str(p) for p in data["paths"]], bool(data["alone"])
        except (OSError, ValueError, KeyError, TypeError):
            return [], False

    def mark(self, paths: list[str], alone: bool) -> None:
        atomic_write_text(self.path, json.dumps({"paths": paths, "alone": alone}))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _error_rows_left_behind(inflight: InFlight, todo: list[Path],
                            folder: Path) -> tuple[list[dict], set[str]]:
    """Error rows for an image the last run died on alone; the paths of a batch it died on (taken singly)."""
    paths, alone = inflight.left_behind()
    pending = {p.relative_to(folder).as_posix() for p in todo}
    paths = [p for p in paths if p in pending]
    if alone and paths:
        return [_row(p, None, None, "", "the previous run was killed while inspecting this image alone "
                                        "(out of memory or a crashing decoder?); not tried again "
                                        "(--retry-errors does)")
                for p in paths], set()
    return [], set(paths)


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
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_row: Callable[[dict], None] | None = None,
    records: object | None = None,  # a defectlab.records.RecordStore: every inspected image is recorded
    source: str = "",  # line/station tag stored with each record
    executor: str = "local",  # "local" | "ray" (defectlab.inspect.executors)
    address: str | None = None,  # ray: the cluster to join (None: a local Ray)
    workers: int | None = None,  # ray: actors
    max_model_pixels: int | None = None,
) -> InspectSummary:
    """Inspect every image under ``folder`` with a fitted run (or an already loaded engine); rows go to
    the CSV ``out`` (appended: resumable). With ``heatmaps``, an overlay PNG per image goes there.
    ``max_pixels``: the decode limit (file width x height); the model's own pixel budget applies too
    (``Detector.input_size``). ``on_row(row)`` is called for every row written (after it is on disk).
    ``executor``: ``local`` (this process) or ``ray`` (an actor pool, each actor loading ``run`` once: ``run``
    must then be the run folder; ``address`` joins a Ray cluster, else a local Ray is started; ``workers``
    actors, default one per CPU); ``max_model_pixels`` is set on the engine(s) when given."""
    folder, out = Path(folder), Path(out)
    check_executor(executor)
    if executor != "local" and not isinstance(run, (str, Path)):
        raise ConfigError(f"executor '{executor}' loads the run in every worker: give the run folder")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if not folder.is_dir():
        raise BadInputError(folder, "not a folder")
    heat_dir = Path(heatmaps) if heatmaps is not None else None
    images = find_images(folder, exclude=[heat_dir] if heat_dir else [])
    model = None
    if executor == "local":
        model = load_engine(run, engine) if isinstance(run, (str, Path)) else run
        if max_model_pixels is not None:
            model.max_model_pixels = max_model_pixels  # type: ignore[attr-defined]
    elif records is not None:
        raise ConfigError("--records works with the local executor only for now")
    columns = COLUMNS + tuple(getattr(model, "extra_columns", ()) if model is not None else _extra_columns(run))
    done = read_done(out, retry_errors=retry_errors, columns=columns)
    todo = [p for p in images if p.relative_to(folder).as_posix() not in done]
    summary = InspectSummary(out, len(images), len(images) - len(todo), 0, 0, 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not out.exists() or out.stat().st_size == 0
    inflight = InFlight(out)
    given_up, suspects = _error_rows_left_behind(inflight, todo, folder)
    skip = {r["path"] for r in given_up}
    careful = [p for p in todo if p.relative_to(folder).as_posix() in suspects]
    rest = [p for p in todo if p.relative_to(folder).as_posix() not in suspects | skip]
    units = [([p], True) for p in careful] + [(b, False) for b in _batches(rest, batch_size)]

    def rel(path: Path) -> str:
        return path.relative_to(folder).as_posix()

    with open(out, "a", newline="", encoding="utf-8") as fh, ThreadPoolExecutor(2) as pool, \
            tqdm(total=len(todo), desc="inspect", unit="img", disable=not progress) as bar:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n", restval="")

        def write(rows: list[dict]) -> None:
            writer.writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())
            for r in rows:
                _count(summary, r, folder)
                if on_row is not None:
                    on_row(r)
            bar.update(len(rows))

        if new_file:
            writer.writeheader()
            fh.flush()
        if given_up:
            write(given_up)
        if executor == "ray":  # the same units, scored by actors, written in order
            job = UnitJob(str(run), engine, str(folder), str(heat_dir) if heat_dir else None, max_pixels,
                          max_model_pixels)
            for rows in ray_unit_rows(job, [[rel(p) for p in b] for b, _ in units], address=address,
                                      workers=workers):
                write(rows)
            units = []
        pending: list[Future] | None = None
        for i, (batch, single) in enumerate(units):
            nxt = units[i + 1] if i + 1 < len(units) else None
            prefetch = nxt is not None and not single and not nxt[1]  # decode the next batch meanwhile
            in_flight = [rel(p) for p in batch + (nxt[0] if prefetch and nxt else [])]
            inflight.mark(in_flight, alone=len(in_flight) == 1)
            if pending is None:
                pending = [pool.submit(_load, model, p, max_pixels) for p in batch]
            loaded = [f.result() for f in pending]
            pending = [pool.submit(_load, model, p, max_pixels) for p in nxt[0]] if prefetch and nxt else None
            scored: list | None = [] if records is not None else None
            t_batch = time.perf_counter()
            rows = _batch_rows(model, folder, batch, loaded, heat_dir, scored)
            if scored:  # records: before the CSV rows (a resume re-records at most a batch, never loses one)
                from defectlab.records.recorder import record_batch

                record_batch(records, model, scored, (time.perf_counter() - t_batch) * 1000 / len(scored), source)
            write(rows)
        inflight.clear()
    return summary


def _extra_columns(run: str | Path | Engine) -> tuple[str, ...]:
    """The CSV columns a run adds, read without loading its model (the Ray driver never does)."""
    from defectlab.verdict.bundle import Bundle, is_bundle

    return tuple(Bundle.extra_columns) if isinstance(run, (str, Path)) and is_bundle(run) else ()


def _batch_rows(model: Engine, folder: Path, batch: list[Path], loaded: list[Decoded | str],
                heat_dir: Path | None, scored: list | None = None) -> list[dict]:
    """CSV rows of one batch; ``scored`` (if given) collects (path, name, image, prediction) per image."""
    ok = [(p, d) for p, d in zip(batch, loaded, strict=True) if isinstance(d, Decoded)]
    preds = _predict(model, [d.image for _, d in ok]) if ok else []
    results = {p: (d, pred) for (p, d), pred in zip(ok, preds, strict=True)}
    rows = []
    for path, d in zip(batch, loaded, strict=True):
        rel = path.relative_to(folder).as_posix()
        if not isinstance(d, Decoded):
            rows.append(_row(rel, None, None, "", d))
            continue
        decoded, pred = results[path]
        if isinstance(pred, str):
            rows.append(_row(rel, None, None, "", pred))
            continue
        heat = ""
        if heat_dir is not None:
            target = heat_dir / _heatmap_name(rel)
            with atomic_path(target) as tmp:
                overlay(decoded.image, pred).save(tmp, format="PNG")
            heat = str(target)
        rows.append(_row(rel, pred, decoded, heat, ""))
        if scored is not None:
            scored.append((path, rel, decoded, pred))
    return rows


def _count(summary: InspectSummary, row: dict, folder: Path) -> None:
    if row["verdict"] == "error":
        summary.errors += 1
        summary.engine_errors += row["error"].startswith(ENGINE_FAILURE)
        log.warning("%s: %s", folder / row["path"], row["error"])
    else:
        summary.inspected += 1
        summary.defects += row["verdict"] == "defect"
