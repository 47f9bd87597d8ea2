"""The record store: one small interface over a database (SQLite file by default, any SQLAlchemy URL)
and a content-addressed image folder.

``open_store(target)``: ``target`` is a folder (SQLite ``records.sqlite`` + ``images/`` inside, created on
first use) or a database URL (then ``images=`` names the image folder). The schema is migrated on open.
A record is written image-first (the file is renamed into place, then the row committed in one
transaction), so a crash leaves at worst an unreferenced image, never a row without its image.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Select, func, insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from defectlab.errors import BadInputError, ConfigError
from defectlab.records.images import ImageFolder
from defectlab.records.models import QUEUED, SKIPPED, Inspection
from defectlab.records.schema import _short, make_engine, migrate

DB_FILE = "records.sqlite"
IMAGES_DIR = "images"
VERDICTS = ("good", "defect")
MAX_PAGE = 1000
QUEUE_COUNT_CAP = 10_000  # the review queue's size is counted up to this

# columns returned by list/get (the row's dict form)
COLUMNS = [c.name for c in Inspection.__table__.columns]


@dataclass
class NewRecord:
    """One inspection to record (prediction fields + the image bytes)."""

    image_name: str
    image: bytes
    width: int
    height: int
    model_version: str
    score: float
    threshold: float
    verdict: str
    latency_ms: float
    source: str = ""
    origin: str = "cli"
    boxes: list[list[int]] = field(default_factory=list)
    type: str | None = None
    type_prob: float | None = None
    type_top: list[list[Any]] | None = None
    regions: list[Any] | None = None
    map_png: bytes | None = None  # 8-bit anomaly map (128 = the pixel threshold), kept for review masks
    image_ext: str = ".png"
    created_at: datetime | None = None


@dataclass(frozen=True)
class RecordFilter:
    since: datetime | None = None
    until: datetime | None = None
    verdict: str | None = None
    type: str | None = None
    model: str | None = None  # model_version (a prefix is enough)
    source: str | None = None
    reviewed: bool | None = None

    def __post_init__(self) -> None:
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise ConfigError(f"unknown verdict '{self.verdict}'; known: {', '.join(VERDICTS)}")


def priority(score: float, threshold: float, verdict: str, type_: str | None) -> tuple[float, bool]:
    """Review-queue order (higher first) and whether the item belongs in the queue at all: every flagged
    part, every part within 20% of the threshold and every ``unknown`` type; an unknown type first, then
    the closer to the threshold the sooner."""
    margin = abs(score - threshold) / max(abs(threshold), 1e-12)
    unknown = type_ == "unknown"
    return (1.0 if unknown else 0.0) + 1.0 / (
        1.0 + 5.0 * margin
    ), verdict == "defect" or margin <= 0.2 or unknown


def utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they are UTC."""
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def row_dict(row: Any) -> dict[str, Any]:
    out = {c: getattr(row, c) for c in COLUMNS}
    out["created_at"] = utc(out["created_at"]).isoformat()
    out["reviewed_at"] = utc(out["reviewed_at"]).isoformat() if out["reviewed_at"] else None
    return out


class RecordStore:
    def __init__(self, engine: Engine, images: ImageFolder, where: str) -> None:
        self.engine = engine
        self.images = images
        self.where = where

    # -- writing --------------------------------------------------------------------------------------
    def record_many(self, records: list[NewRecord]) -> list[int]:
        """Store the images, then insert the rows in one transaction; returns their ids."""
        rows = [self.row(rec) for rec in records]
        if not rows:
            return []
        with self._tx() as conn:
            return insert_rows(conn, rows)

    def row(self, rec: NewRecord, image: tuple[str, str] | None = None) -> dict[str, Any]:
        """The table row of ``rec``, its image (and map) stored first; ``image``: (sha256, path) of an
        image already stored (``ImageFolder.put``)."""
        if rec.verdict not in VERDICTS:
            raise ConfigError(f"verdict must be one of {VERDICTS}, got '{rec.verdict}'")
        digest, rel = image or self.images.put(rec.image, rec.image_ext)
        map_rel = self.images.put(rec.map_png, ".png")[1] if rec.map_png is not None else None
        prio, queued = priority(rec.score, rec.threshold, rec.verdict, rec.type)
        return {
            "created_at": rec.created_at or datetime.now(UTC),
            "source": rec.source[:200],
            "origin": rec.origin,
            "image_name": rec.image_name,
            "image_sha256": digest,
            "image_path": rel,
            "map_path": map_rel,
            "width": rec.width,
            "height": rec.height,
            "model_version": rec.model_version,
            "score": float(rec.score),
            "threshold": float(rec.threshold),
            "verdict": rec.verdict,
            "type": rec.type,
            "type_prob": rec.type_prob,
            "type_top": rec.type_top,
            "boxes": [[int(v) for v in b] for b in rec.boxes],
            "regions": rec.regions,
            "latency_ms": float(rec.latency_ms),
            "priority": prio,
            "review_state": QUEUED if queued else SKIPPED,
            "version": 1,
        }

    def record(self, rec: NewRecord) -> int:
        return self.record_many([rec])[0]

    # -- reading --------------------------------------------------------------------------------------
    def get(self, record_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(Inspection.__table__).where(Inspection.id == record_id)).first()
        return row_dict(row) if row else None

    def _filtered(self, f: RecordFilter) -> Select:
        q = select(Inspection.__table__)
        if f.since:
            q = q.where(Inspection.created_at >= f.since)
        if f.until:
            q = q.where(Inspection.created_at < f.until)
        if f.verdict:
            q = q.where(Inspection.verdict == f.verdict)
        if f.type:
            q = q.where(Inspection.type == f.type)
        if f.model:
            q = q.where(Inspection.model_version.startswith(f.model, autoescape=True))
        if f.source:
            q = q.where(Inspection.source == f.source)
        if f.reviewed is not None:
            q = q.where((Inspection.review_state == "reviewed") == f.reviewed)
        return q

    def list(
        self, f: RecordFilter = RecordFilter(), *, limit: int = 50, before: int | None = None
    ) -> list[dict[str, Any]]:
        """Newest first; ``before`` (an id) pages on: pass the last id of the previous page."""
        q = self._filtered(f).order_by(Inspection.id.desc()).limit(_limit(limit))
        if before is not None:
            q = q.where(Inspection.id < before)
        with self.engine.connect() as conn:
            return [row_dict(r) for r in conn.execute(q)]

    def count(self, f: RecordFilter = RecordFilter()) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(select(func.count()).select_from(self._filtered(f).subquery())).scalar_one()
            )

    def queue(self, *, limit: int = 20, offset: int = 0) -> list[dict[str, Any]]:
        """Items waiting for a human look, most worth it first (equal priority: newest first, so the
        order is one backward walk of the queue index)."""
        q = (
            select(Inspection.__table__)
            .where(Inspection.review_state == QUEUED)
            .order_by(Inspection.priority.desc(), Inspection.id.desc())
            .limit(_limit(limit))
            .offset(max(0, offset))
        )
        with self.engine.connect() as conn:
            return [row_dict(r) for r in conn.execute(q)]

    def queue_size(self, cap: int = QUEUE_COUNT_CAP) -> int:
        """Items in the queue, counted up to ``cap`` (a count that can only say "more than cap" stays
        fast however long the queue grows)."""
        sub = select(Inspection.id).where(Inspection.review_state == QUEUED).limit(cap).subquery()
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(sub)).scalar_one())

    def iter_rows(
        self, f: RecordFilter = RecordFilter(), chunk: int = 5000
    ) -> Iterator[list[dict[str, Any]]]:
        """Every matching row, oldest first, in chunks (keyset paging: constant memory)."""
        last = 0
        while True:
            q = self._filtered(f).where(Inspection.id > last).order_by(Inspection.id.asc()).limit(chunk)
            with self.engine.connect() as conn:
                rows = [row_dict(r) for r in conn.execute(q)]
            if not rows:
                return
            yield rows
            last = rows[-1]["id"]

    def _tx(self):  # type: ignore[no-untyped-def]
        return _Tx(self)

    def close(self) -> None:
        self.engine.dispose()


class _Tx:
    """``engine.begin()`` that turns a database failure into one line naming the store."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store

    def __enter__(self):  # type: ignore[no-untyped-def]
        self.cm = self.store.engine.begin()
        return self.cm.__enter__()

    def __exit__(self, *exc: Any) -> bool:
        try:
            self.cm.__exit__(*exc)
        except SQLAlchemyError as err:
            raise BadInputError(
                self.store.where, f"record store write failed ({_short(err)})"
            ) from err
        if exc[0] is not None and issubclass(exc[0], SQLAlchemyError):
            raise BadInputError(self.store.where, f"record store write failed ({_short(exc[1])})") from exc[1]
        return False


_INSERT_ONE = insert(Inspection).returning(Inspection.id)


def insert_rows(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert ``rows`` in the connection's transaction; their ids in order."""
    if len(rows) == 1:  # a plain execute: cheaper than the batched ("insertmanyvalues") form
        return [conn.execute(_INSERT_ONE, rows[0]).scalar_one()]
    if conn.dialect.name in ("postgresql", "sqlite"):
        return list(conn.execute(insert(Inspection).returning(Inspection.id, sort_by_parameter_order=True),
                                 rows).scalars().all())
    return [conn.execute(insert(Inspection), r).inserted_primary_key[0] for r in rows]  # pragma: no cover


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise ConfigError(f"page size must be 1..{MAX_PAGE}, got {limit}")
    return limit


def open_store(target: str | Path, *, images: str | Path | None = None, create: bool = True) -> RecordStore:
    """A folder (SQLite inside, created if absent unless ``create=False``) or a database URL (``images``
    required)."""
    text = str(target)
    if not create and "://" not in text and not (Path(text) / DB_FILE).is_file():
        raise BadInputError(text, f"no record store here ({DB_FILE} missing)")
    if "://" in text:
        if images is None:
            raise ConfigError(f"a database URL needs an image folder too (--records-images DIR): {text}")
        engine, where = make_engine(text), text.split("@")[-1]
    else:
        folder = Path(text)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInputError(folder, f"cannot create the record store folder ({exc.strerror})") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise BadInputError(folder, "the record store folder is not writable")
        engine, where = make_engine(f"sqlite:///{(folder / DB_FILE).resolve()}"), str(folder)
        images = folder / IMAGES_DIR if images is None else images
    image_folder = ImageFolder(images)
    migrate(engine, where=where)
    return RecordStore(engine, image_folder, where)
