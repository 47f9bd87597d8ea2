"""The service's record store: every ``/inspect`` request recorded, ``/records`` (paginated JSON),
``/review`` (the review page) and ``/review/queue`` + ``POST /records/{id}/review`` (its API).

Every route here reads or writes records, so all of them (the page's HTML aside, which holds no data)
need the API key when the server has one. ``attach_records`` is the only thing ``create_app`` calls.
"""

from __future__ import annotations

import asyncio
import io
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Callable

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from defectlab.anomaly.base import Prediction
from defectlab.data.io import Decoded
from defectlab.errors import DefectLabError
from defectlab.inspect.render import overlay_png
from defectlab.inspect.version import engine_version
from defectlab.records import (
    BadReview,
    RecordFilter,
    RecordStore,
    ReviewConflict,
    ReviewInput,
    UnknownRecord,
    apply_review,
    from_prediction,
    history,
    open_store,
)
from defectlab.records.store import MAX_PAGE, QUEUE_COUNT_CAP, utc
from defectlab.records.writer import GroupWriter

PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; connect-src 'self'"
)


class ReviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(description="good | defect")
    reviewer: str = Field(min_length=1, max_length=200)
    version: int = Field(ge=1, description="The record's version the review is based on (409 if stale)")
    type: str | None = Field(None, max_length=100, description="Defect type; omitted keeps the predicted one")
    regions: list[dict[str, Any]] | None = Field(
        None,
        description='[{"box": [x0, y0, x1, y1], "mask": "box"|"map"}]; omitted accepts the predicted boxes',
    )


class Recorder:
    """Records ``/inspect`` requests, off the request's path as far as durability allows:

    * ``stage(data, name)`` right after the upload decodes: hashing and writing the image file run on a
      small pool while the model scores;
    * ``submit(staged, decoded, pred, ...)`` after scoring: the writer thread (``GroupWriter``) builds the
      row (anomaly map PNG) while the request renders its heatmap, and commits it, in one transaction with
      whatever other requests queued meanwhile;
    * the request answers once ``Pending.committed()`` returns: an answered request is on record.
    """

    def __init__(self, store: RecordStore, engine: Any, default_source: str = "", workers: int = 2) -> None:
        self.store, self.engine, self.default_source = store, engine, default_source
        self.version = engine_version(engine)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="records-images")
        self.writer = GroupWriter(store)

    def stage(self, data: bytes, name: str) -> Staged:
        ext = Path(name).suffix or ".img"
        return Staged(self.pool.submit(self.store.images.put, data, ext), data, name, ext)

    def submit(self, staged: Staged, decoded: Decoded, pred: Prediction, t0: float,
               source: str | None = None) -> Pending:
        """``t0``: when scoring started; the recorded latency is decode + inference. The record keeps the
        file's own size (as the response does), also for an image reduced on load."""
        latency_ms = round((time.perf_counter() - t0) * 1000, 2)

        def make_row() -> dict[str, Any]:
            rec = from_prediction(pred, staged.data, staged.name, decoded.width, decoded.height,
                                  version=self.version, latency_ms=latency_ms,
                                  source=source or self.default_source, origin="service", ext=staged.ext)
            return self.store.row(rec, image=staged.future.result())

        return Pending(self.writer.submit(make_row))

@dataclass(frozen=True)
class Staged:
    """An upload's image file being written (``future``: its sha256 and path in the image folder)."""

    future: Future
    data: bytes
    name: str
    ext: str


class Pending:
    def __init__(self, future: Future, timeout_s: float = 60.0) -> None:
        self.future, self.timeout_s = future, timeout_s

    async def committed(self) -> dict[str, Any]:
        """Wait (without holding a thread) until the record is committed; 503 if it could not be (not on
        record = did not happen). Returns the access log's fields: ``record_id`` and ``record_wait_ms``,
        how long the answer waited for the commit (what recording adds to it)."""
        t0 = time.perf_counter()
        try:
            rid = await asyncio.wait_for(asyncio.wrap_future(self.future), self.timeout_s)
            return {"record_id": rid, "record_wait_ms": round((time.perf_counter() - t0) * 1000, 3)}
        except DefectLabError as exc:
            raise HTTPException(503, f"inspection not recorded: {exc}") from None
        except asyncio.TimeoutError:
            raise HTTPException(503, "inspection not recorded in time") from None


def _get(store: RecordStore, record_id: int) -> dict[str, Any]:
    item = store.get(record_id)
    if item is None:
        raise HTTPException(404, f"no inspection record with id {record_id}")
    return item


def _heatmap(store: RecordStore, item: dict[str, Any]) -> bytes:
    image = Image.open(store.images.path(item["image_path"])).convert("RGB")
    amap = np.zeros((item["height"], item["width"]), np.float32)
    if item["map_path"]:
        amap = np.asarray(Image.open(store.images.path(item["map_path"])).convert("L"), np.float32) / 128.0
    pred = Prediction(
        item["image_name"],
        item["score"],
        item["threshold"],
        item["verdict"] == "defect",
        amap,
        [tuple(b) for b in item["boxes"]],
        {"pixel_threshold": 1.0},
    )
    return overlay_png(image, pred)


def records_router(store: RecordStore, check_key: Callable[..., None]) -> APIRouter:
    router = APIRouter(dependencies=[Depends(check_key)], tags=["records"])

    @router.get("/records")
    def list_records(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        before: Annotated[int | None, Query(description="Page on: the last id of the previous page")] = None,
        since: str | None = None,
        until: str | None = None,
        verdict: str | None = None,
        type: str | None = None,
        model: str | None = None,
        source: str | None = None,
        reviewed: bool | None = None,
    ) -> dict[str, Any]:
        """Records, newest first, filtered; ``next`` is the ``before`` of the next page (null at the end)."""
        from datetime import datetime

        try:
            f = RecordFilter(
                since=utc(datetime.fromisoformat(since)) if since else None,
                until=utc(datetime.fromisoformat(until)) if until else None,
                verdict=verdict,
                type=type,
                model=model,
                source=source,
                reviewed=reviewed,
            )
        except ValueError as exc:
            raise HTTPException(422, f"bad filter: {exc}") from None
        items = store.list(f, limit=limit, before=before)
        return {"items": items, "next": items[-1]["id"] if len(items) == limit else None}

    @router.get("/records/{record_id}")
    def get_record(record_id: int) -> dict[str, Any]:
        return {**_get(store, record_id), "reviews": history(store, record_id)}

    @router.get("/records/{record_id}/image", response_class=Response)
    def get_image(record_id: int) -> Response:
        item = _get(store, record_id)
        data = store.images.path(item["image_path"]).read_bytes()
        return Response(
            data, media_type=Image.MIME.get(Image.open(io.BytesIO(data)).format or "", "image/png")
        )

    @router.get("/records/{record_id}/heatmap", response_class=Response)
    def get_heatmap(record_id: int) -> Response:
        """The anomaly map over the image, predicted boxes drawn (PNG)."""
        return Response(_heatmap(store, _get(store, record_id)), media_type="image/png")

    @router.get("/review/queue")
    def queue(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20, offset: Annotated[int, Query(ge=0)] = 0
    ) -> dict[str, Any]:
        """Flagged and uncertain parts waiting for review, most worth a look first; ``total`` is counted up
        to ``total_cap`` (``total == total_cap`` means at least that many)."""
        return {"items": store.queue(limit=limit, offset=offset), "total": store.queue_size(),
                "total_cap": QUEUE_COUNT_CAP}

    @router.post(
        "/records/{record_id}/review",
        responses={
            404: {"description": "Unknown record"},
            409: {
                "description": "Stale version: "
                "someone reviewed it first; the body's 'current' is the record now"
            },
            422: {"description": "Malformed review"},
        },
    )
    def review(record_id: int, body: ReviewBody) -> Any:
        """Store a review based on the record's ``version``; a stale one gets 409 and the current state."""
        try:
            return apply_review(
                store,
                record_id,
                ReviewInput(body.label, body.reviewer, body.version, body.type, body.regions),
            )
        except UnknownRecord as exc:
            raise HTTPException(404, str(exc)) from None
        except BadReview as exc:
            raise HTTPException(422, str(exc)) from None
        except ReviewConflict as exc:
            return JSONResponse({"detail": str(exc), "current": exc.current}, status_code=409)

    return router


def attach_records(
    app: FastAPI,
    records: RecordStore | str | Path,
    check_key: Callable[..., None],
    engine: Any,
    *,
    images: str | Path | None = None,
    source: str = "",
) -> Recorder:
    """Open the store (a RecordStore, a folder or a URL), add the routes and the review page; returns the
    hook ``/inspect`` calls."""
    store = records if isinstance(records, RecordStore) else open_store(records, images=images)
    page = resources.files("defectlab.serve").joinpath("review.html").read_text(encoding="utf-8")
    app.include_router(records_router(store, check_key))

    @app.get("/review", response_class=HTMLResponse, include_in_schema=False)
    def review_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP})

    app.state.records = store
    recorder = Recorder(store, engine, source)
    app.state.recorder = recorder
    return recorder


__all__ = ["Pending", "Recorder", "Staged", "attach_records", "records_router"]
