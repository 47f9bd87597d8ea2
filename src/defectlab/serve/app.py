"""``defectlab serve``: the fitted detector behind an HTTP API (FastAPI, OpenAPI at /docs) and a web page.

The model is loaded once when the app is built (state dicts + JSON, no pickle); requests run in
FastAPI's thread pool and share it under a lock (one CPU inference at a time keeps latency steady).
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, Security, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel

import defectlab
from defectlab.errors import ConfigError, DefectLabError
from defectlab.inspect.engine import Engine, load_engine
from defectlab.inspect.render import overlay_png
from defectlab.serve.limits import BodyLimit, UploadRefused, decode_upload


@dataclass(frozen=True)
class ServeConfig:
    api_key: str | None = None  # when set, /inspect and /model need header X-API-Key
    max_upload_mb: float = 20.0  # request body limit (413 above)
    max_pixels: int = 40_000_000  # width x height limit, read from the header before decoding (413 above)
    engine: str = "torch"  # "torch" | "onnx"

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0 or self.max_pixels <= 0:
            raise ConfigError("max_upload_mb and max_pixels must be positive")


class InspectResult(BaseModel):
    filename: str
    width: int
    height: int
    score: float
    threshold: float
    verdict: str  # "defect" | "good"
    is_defect: bool
    boxes: list[tuple[int, int, int, int]]  # x0, y0, x1, y1 in image pixels (x1, y1 exclusive)
    heatmap_png: str | None  # base64 PNG: the anomaly map over the image, boxes drawn
    elapsed_ms: float
    # an inspection bundle (defectlab.verdict) adds the part's verdict; None for a plain anomaly run
    type: str | None = None  # defect type, "unknown", or None when good
    probabilities: dict[str, float] | None = None  # top-3 type probabilities
    regions: list[dict[str, Any]] | None = None  # box, score, area, type, probabilities, mask (RLE in its box)
    scores: dict[str, float] | None = None  # the raw scores and thresholds behind the verdict


class Health(BaseModel):
    status: str
    version: str
    engine: str
    auth_required: bool
    uptime_s: float


_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="Needed when the server runs with --api-key.")


def create_app(run: str | Path | Engine, config: ServeConfig = ServeConfig()) -> FastAPI:
    """Build the app; ``run`` is a run folder (loaded now, so a bad run fails at start) or an engine."""
    engine = load_engine(run, config.engine) if isinstance(run, (str, Path)) else run
    info = engine.info()
    lock = threading.Lock()
    started = time.monotonic()
    page = resources.files("defectlab.serve").joinpath("page.html").read_text(encoding="utf-8")

    def check_key(key: Annotated[str | None, Security(_KEY)] = None) -> None:
        if config.api_key and not (key and secrets.compare_digest(key.encode(), config.api_key.encode())):
            raise HTTPException(401, "missing or wrong API key: send it in the X-API-Key header",
                                headers={"WWW-Authenticate": "X-API-Key"})

    app = FastAPI(title="defectlab inspection service", version=defectlab.__version__,
                  description="Anomaly inspection of product images: score, verdict, defect boxes and heatmap.")

    @app.exception_handler(UploadRefused)
    async def _refused(request: Request, exc: UploadRefused) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(DefectLabError)
    async def _bad_input(request: Request, exc: DefectLabError) -> JSONResponse:
        return JSONResponse({"detail": getattr(exc, "problem", str(exc))}, status_code=422)

    def run_one(file: UploadFile) -> tuple[Any, Any, float]:
        t0 = time.perf_counter()
        image = decode_upload(file.file.read(), max_pixels=config.max_pixels)
        with lock:
            pred = engine.predict_images([image])[0]
        return image, pred, t0

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                           "style-src 'unsafe-inline'; script-src 'unsafe-inline'"})

    @app.get("/health", response_model=Health)
    def health() -> Health:
        return Health(status="ok", version=defectlab.__version__, engine=config.engine,
                      auth_required=bool(config.api_key), uptime_s=round(time.monotonic() - started, 3))

    @app.get("/model", dependencies=[Depends(check_key)])
    def model() -> dict[str, Any]:
        """Method, backbone, image size, thresholds and training-data summary of the loaded run."""
        limits = {"max_upload_bytes": int(config.max_upload_mb * 2**20), "max_pixels": config.max_pixels}
        return {**info, "engine": config.engine, "limits": limits}

    @app.post("/inspect", response_model=InspectResult, dependencies=[Depends(check_key)],
              responses={401: {"description": "API key missing or wrong"}, 413: {"description": "Upload too large"},
                         415: {"description": "Not an image"}, 422: {"description": "Broken image"}})
    def inspect(file: Annotated[UploadFile, File(description="PNG, JPEG, BMP, TIFF or WebP image")],
                heatmap: Annotated[bool, Query(description="Include the heatmap overlay PNG (base64)")] = True,
                ) -> InspectResult:
        """Inspect one image: anomaly score, verdict against the deployable threshold, boxes, heatmap."""
        image, pred, t0 = run_one(file)
        png = base64.b64encode(overlay_png(image, pred)).decode("ascii") if heatmap else None
        return InspectResult(filename=file.filename or "", width=image.width, height=image.height,
                             score=float(pred.score), threshold=float(pred.threshold),
                             verdict="defect" if pred.is_defect else "good", is_defect=bool(pred.is_defect),
                             boxes=[tuple(int(v) for v in b) for b in pred.boxes], heatmap_png=png,
                             elapsed_ms=round((time.perf_counter() - t0) * 1000, 2),
                             **{k: pred.extra[k] for k in ("type", "probabilities", "regions", "scores")
                                if k in pred.extra})

    @app.post("/inspect/heatmap", dependencies=[Depends(check_key)], response_class=Response,
              responses={200: {"content": {"image/png": {}}, "description": "Heatmap overlay PNG; the score "
                               "and verdict are in the X-Defectlab-Score / X-Defectlab-Verdict headers"}})
    def inspect_heatmap(file: Annotated[UploadFile, File(description="PNG, JPEG, BMP, TIFF or WebP image")]
                        ) -> Response:
        """Inspect one image and return the heatmap overlay itself as image/png."""
        image, pred, _ = run_one(file)
        return Response(overlay_png(image, pred), media_type="image/png",
                        headers={"X-Defectlab-Score": f"{pred.score:.6g}",
                                 "X-Defectlab-Threshold": f"{pred.threshold:.6g}",
                                 "X-Defectlab-Verdict": "defect" if pred.is_defect else "good"})

    app.add_middleware(BodyLimit, max_bytes=int(config.max_upload_mb * 2**20))
    return app
