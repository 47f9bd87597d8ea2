"""``defectlab serve``: the fitted detector behind an HTTP API and a web page (docs/serving.md).

The model is loaded once when the app is built (state dicts + JSON, no pickle). Inference requests are
admitted up to ``queue_size`` at once (503 + Retry-After beyond), their bodies read with a stall timeout,
and decoded, scored and rendered one at a time on one worker thread (steady latency, and the memory of
one request at a time: the per-request budget in docs/serving.md); a request waits at most
``inference_timeout_s`` for its result (504 beyond).
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import ctypes.util
import logging
import math
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, Security, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from PIL import Image
from pydantic import BaseModel

import defectlab
from defectlab.data.io import DEFAULT_MAX_PIXELS, Decoded
from defectlab.errors import ConfigError, DefectLabError
from defectlab.inspect.engine import Engine, load_engine
from defectlab.inspect.render import overlay_png
from defectlab.inspect.version import model_version
from defectlab.runtime.prediction import Prediction
from defectlab.serve.limits import Admission, BodyLimit, QueueGate, UploadRefused, decode_upload
from defectlab.serve.ops import DOCS_PAGE, Metrics, RequestContext, RequestHook, public_info

log = logging.getLogger(__name__)
INFERENCE_PATHS = ("/inspect", "/inspect/heatmap")
UPLOAD_HELP = "PNG, JPEG, BMP, TIFF or WebP image"


@dataclass(frozen=True)
class ServeConfig:
    api_key: str | None = None  # when set, /inspect and /model need header X-API-Key
    max_upload_mb: float = 20.0  # request body limit (413 above)
    max_pixels: int = DEFAULT_MAX_PIXELS  # width x height of the file, read from the header (413 above)
    engine: str = "torch"  # "torch" | "onnx"
    device: str = "auto"  # where the model runs: auto | cpu | cuda[:N] | mps (inspect.engine.load_engine)
    max_model_pixels: int | None = None  # model-side input limit (413 above); None: 4x the fitted input area
    queue_size: int = 8  # inference requests admitted at once, the running one included (503 beyond)
    body_timeout_s: float = 30.0  # an upload that sends nothing for this long gets 408
    inference_timeout_s: float = 60.0  # a request waits at most this long for its result (504 beyond)

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0 or self.max_pixels <= 0 or (self.max_model_pixels or 1) <= 0:
            raise ConfigError("max_upload_mb, max_pixels and max_model_pixels must be positive")
        if self.queue_size < 1 or self.body_timeout_s <= 0 or self.inference_timeout_s <= 0:
            raise ConfigError("queue_size must be at least 1 and the timeouts positive")


class InspectResult(BaseModel):
    filename: str
    width: int  # the file's own size (after EXIF orientation)
    height: int
    score: float
    threshold: float
    verdict: str  # "defect" | "good"
    is_defect: bool
    boxes: list[tuple[int, int, int, int]]  # x0, y0, x1, y1 in the file's pixels (x1, y1 exclusive)
    heatmap_png: str | None  # base64 PNG: the anomaly map over the image, boxes drawn (large images: reduced)
    elapsed_ms: float
    model: str  # the model's version (defectlab.inspect.version): the same string the records carry
    request_id: str
    # an inspection bundle (defectlab.verdict) adds the part's verdict; None for a plain anomaly run
    type: str | None = None  # defect type, "unknown", or None when good
    probabilities: dict[str, float] | None = None  # top-3 type probabilities
    regions: list[dict[str, Any]] | None = None  # box, score, area, type, probabilities, mask (RLE in its box)
    scores: dict[str, float] | None = None  # the raw scores and thresholds behind the verdict


class Health(BaseModel):
    status: str
    version: str
    engine: str
    model: str
    auth_required: bool
    uptime_s: float


_KEY = APIKeyHeader(name="X-API-Key", auto_error=False,
                    description="Needed when the server runs with --api-key.")
_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; connect-src 'self'")


def result_fields(filename: str, decoded: Decoded, pred: Prediction) -> dict[str, Any]:
    """The inspection fields of a response (``/inspect`` JSON; also handed to inspection hooks)."""
    return {"filename": filename, "width": decoded.width, "height": decoded.height,
            "score": float(pred.score), "threshold": float(pred.threshold),
            "verdict": "defect" if pred.is_defect else "good", "is_defect": bool(pred.is_defect),
            "boxes": [tuple(int(v) for v in b) for b in pred.boxes],
            **{k: pred.extra[k] for k in ("type", "probabilities", "regions", "scores") if k in pred.extra}}


def probe_image(engine: Engine) -> Image.Image:
    """A fixed textured image the model must score (``/ready``), at a size the model takes as is."""
    pre = getattr(engine, "preprocess", None)
    h, w = pre.image_size if pre is not None else (256, 256)
    if pre is not None and pre.variable_size:
        h, w = max(1, round(h / pre.scale)), max(1, round(w / pre.scale))
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(96, 160, (h, w, 3), dtype=np.uint8), "RGB")


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6") if ctypes.util.find_library("c") else None


def _trim_heap() -> None:
    """Give freed heap pages back to the OS after a request (glibc keeps them otherwise: RSS creeps up
    with images of varying size)."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


InspectHook = Callable[[dict[str, Any], Prediction], None]  # (response fields + request_id, prediction)


def create_app(run: str | Path | Engine, config: ServeConfig = ServeConfig(), *,
               request_hooks: list[RequestHook] | None = None,
               inspect_hooks: list[InspectHook] | None = None, records: Any = None,
               records_images: str | Path | None = None, source: str = "") -> FastAPI:
    """Build the app; ``run`` is a run folder (loaded now, so a bad run fails at start) or an engine.
    ``request_hooks`` get every request's log record; ``inspect_hooks`` every inspection (on the worker
    thread, after scoring). Both lists stay live on ``app.state`` for later additions.
    ``records``: a record store (RecordStore, folder or URL): every /inspect is recorded; /records, /review."""
    engine = load_engine(run, config.engine, config.device) if isinstance(run, (str, Path)) else run
    if config.max_model_pixels is not None:
        engine.max_model_pixels = config.max_model_pixels  # type: ignore[attr-defined]
    info = engine.info()
    version = model_version(info)
    started = time.monotonic()
    page = resources.files("defectlab.serve").joinpath("page.html").read_text(encoding="utf-8")
    worker = ThreadPoolExecutor(1, thread_name_prefix="defectlab-infer")  # one request at a time
    probe = probe_image(engine)

    def check_key(key: Annotated[str | None, Security(_KEY)] = None) -> None:
        if config.api_key and not (key and secrets.compare_digest(key.encode(), config.api_key.encode())):
            raise HTTPException(401, "missing or wrong API key: send it in the X-API-Key header",
                                headers={"WWW-Authenticate": "X-API-Key"})

    app = FastAPI(title="defectlab inspection service", version=defectlab.__version__, docs_url=None,
                  redoc_url=None, description="Anomaly inspection of product images: score, verdict, defect "
                                              "boxes and heatmap.")
    app.state.request_hooks = list(request_hooks or [])
    app.state.inspect_hooks = list(inspect_hooks or [])
    # --- records (defectlab.records): routes + the recorder score() calls; see serve/records_api.py
    recorder = None
    if records is not None:
        from defectlab.serve.records_api import attach_records

        recorder = attach_records(app, records, check_key, engine, images=records_images, source=source)
    # --- end records

    @app.exception_handler(UploadRefused)
    async def _refused(request: Request, exc: UploadRefused) -> JSONResponse:
        request.state.log["error"] = exc.message
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(DefectLabError)
    async def _bad_input(request: Request, exc: DefectLabError) -> JSONResponse:
        detail = getattr(exc, "problem", str(exc))
        request.state.log["error"] = detail
        return JSONResponse({"detail": detail}, status_code=getattr(exc, "status", 422))

    async def on_worker(fn: Callable[[], Any]) -> Any:
        future = asyncio.wrap_future(worker.submit(fn))
        try:
            return await asyncio.wait_for(future, config.inference_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"inference did not finish within {config.inference_timeout_s:g} s",
                                headers={"Retry-After": "5"}) from None

    Scored = tuple[dict[str, Any], bytes | None]  # response fields, heatmap PNG

    def score(data: bytes, filename: str, request_id: str, heatmap: bool,
              source: str | None = None) -> tuple[dict[str, Any], bytes | None, Any]:
        t0 = time.perf_counter()
        try:
            pre = getattr(engine, "preprocess", None)
            decoded = decode_upload(data, max_pixels=config.max_pixels, mode=pre.mode if pre else "RGB",
                                    fit=getattr(engine, "input_size", None),
                                    max_work_pixels=getattr(engine, "model_pixel_budget", None))
            staged = recorder.stage(data, filename) if recorder is not None else None  # records: image
            pred = engine.predict_images([decoded.image])[0]                          # file written meanwhile
            pending = recorder.submit(staged, decoded, pred, t0, source) if staged is not None else None
            fields = result_fields(filename, decoded, pred)
            png = overlay_png(decoded.image, pred) if heatmap else None
            for hook in app.state.inspect_hooks:
                try:
                    hook({**fields, "request_id": request_id, "model": version}, pred)
                except Exception:  # noqa: BLE001 - a hook must never break serving
                    log.exception("inspect hook %r failed", hook)
            return fields, png, pending
        finally:
            _trim_heap()

    async def inspect_upload(request: Request, file: UploadFile, heatmap: bool, source: str | None = None) -> Scored:
        data = await file.read()
        record = request.state.log
        fields, png, pending = await on_worker(lambda: score(data, file.filename or "", record["request_id"],
                                                             heatmap, source))
        if pending is not None:  # records: answer only once the record is committed (503 if not)
            record.update(await pending.committed())
        record.update(verdict=fields["verdict"], score=round(fields["score"], 6), width=fields["width"],
                      height=fields["height"])
        return fields, png

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": _CSP})

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(DOCS_PAGE, headers={"Content-Security-Policy": _CSP})

    @app.get("/health", response_model=Health)
    def health() -> Health:
        """Liveness: the process answers. Whether the model scores is /ready."""
        return Health(status="ok", version=defectlab.__version__, engine=config.engine, model=version,
                      auth_required=bool(config.api_key), uptime_s=round(time.monotonic() - started, 3))

    @app.get("/ready", responses={503: {"description": "The model cannot score (details in 'detail')"}})
    async def ready() -> JSONResponse:
        """Readiness: the model scores a built-in probe image to a finite score against a finite threshold."""
        def check() -> dict[str, Any]:
            pred = engine.predict_images([probe])[0]
            score, thr = float(pred.score), float(pred.threshold)
            if not (math.isfinite(score) and math.isfinite(thr)):
                raise ValueError(f"probe scored {score} against threshold {thr}")
            return {"status": "ready", "model": version, "probe_score": round(score, 6), "threshold": thr}
        try:
            return JSONResponse(await on_worker(check))
        except Exception as exc:  # noqa: BLE001 - any failure to score means not ready
            detail = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
            log.error("not ready: %s", detail)
            return JSONResponse({"status": "not ready", "model": version, "detail": str(detail)[:300]},
                                status_code=503, headers={"Retry-After": "5"})

    @app.get("/metrics", response_class=Response)
    def metrics_endpoint() -> Response:
        """Prometheus metrics (text format)."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/model", dependencies=[Depends(check_key)])
    def model() -> dict[str, Any]:
        """Method, backbone, input size, thresholds, limits and training-data summary of the loaded run."""
        limits = {"max_upload_bytes": int(config.max_upload_mb * 2**20), "max_pixels": config.max_pixels,
                  "max_model_pixels": getattr(engine, "model_pixel_budget", None),
                  "queue_size": config.queue_size, "body_timeout_s": config.body_timeout_s,
                  "inference_timeout_s": config.inference_timeout_s}
        return {**public_info(info), "engine": config.engine, "version": version, "limits": limits}

    @app.post("/inspect", response_model=InspectResult, dependencies=[Depends(check_key)],
              responses={401: {"description": "API key missing or wrong"},
                         408: {"description": "Upload stalled"},
                         413: {"description": "Upload or image too large"},
                         415: {"description": "Not an image"},
                         422: {"description": "Broken or too small image"},
                         503: {"description": "Queue full: retry after Retry-After seconds"},
                         504: {"description": "Inference timed out"}})
    async def inspect(request: Request,
                      file: Annotated[UploadFile, File(description=UPLOAD_HELP)],
                      heatmap: Annotated[bool, Query(description="Include the heatmap overlay PNG (base64)")]
                      = True,
                      source: Annotated[str | None, Query(max_length=200, description="Line/station tag")] = None,
                      ) -> InspectResult:
        """Inspect one image: anomaly score, verdict against the deployable threshold, boxes, heatmap."""
        t0 = time.perf_counter()
        fields, png = await inspect_upload(request, file, heatmap, source)
        return InspectResult(**fields, heatmap_png=base64.b64encode(png).decode("ascii") if png else None,
                             elapsed_ms=round((time.perf_counter() - t0) * 1000, 2), model=version,
                             request_id=request.state.log["request_id"])

    @app.post("/inspect/heatmap", dependencies=[Depends(check_key)], response_class=Response,
              responses={200: {"content": {"image/png": {}}, "description": "Heatmap overlay PNG; the score "
                               "and verdict are in the X-Defectlab-Score / X-Defectlab-Verdict headers"}})
    async def inspect_heatmap(request: Request,
                              file: Annotated[UploadFile, File(description=UPLOAD_HELP)]) -> Response:
        """Inspect one image and return the heatmap overlay itself as image/png."""
        fields, png = await inspect_upload(request, file, True)
        return Response(png, media_type="image/png",
                        headers={"X-Defectlab-Score": f"{fields['score']:.6g}",
                                 "X-Defectlab-Threshold": f"{fields['threshold']:.6g}",
                                 "X-Defectlab-Verdict": fields["verdict"]})

    app.add_middleware(BodyLimit, max_bytes=int(config.max_upload_mb * 2**20),
                       timeout_s=config.body_timeout_s)
    gate = QueueGate(config.queue_size)
    app.add_middleware(Admission, gate=gate, paths=INFERENCE_PATHS)
    metrics = Metrics(lambda: float(gate.depth))
    app.add_middleware(RequestContext, model=version, metrics=metrics, hooks=app.state.request_hooks)
    app.state.metrics, app.state.gate = metrics, gate
    return app
