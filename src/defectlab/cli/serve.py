"""``defectlab serve``: the HTTP inspection service (FastAPI + uvicorn) with its web page at /."""

from __future__ import annotations

import ipaddress
import logging
import sys
from pathlib import Path

import typer

from defectlab.data.io import DEFAULT_MAX_PIXELS
from defectlab.serve.app import ServeConfig, create_app

log = logging.getLogger(__name__)


def serve(
    run: Path = typer.Argument(..., help="A fitted anomaly run folder."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: str = typer.Option(None, envvar="DEFECTLAB_API_KEY",
                                help="Require this key in the X-API-Key header (or set DEFECTLAB_API_KEY)."),
    max_upload_mb: float = typer.Option(20.0, help="Largest accepted upload, MiB (413 above)."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Largest image file, width x height (413)."),
    max_model_pixels: int = typer.Option(None, help="Largest input the model sees, w x h after its resize "
                                         "(413 above; default 4x the fitted input area)."),
    engine: str = typer.Option("torch", help="torch | onnx (onnx needs `defectlab export onnx RUN` first)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N] | mps: where the model runs (the ONNX "
                               "engine: cpu, or cuda with onnxruntime-gpu)."),
    queue_size: int = typer.Option(8, help="Inference requests admitted at once (503 + Retry-After beyond)."),
    body_timeout: float = typer.Option(30.0, help="Seconds an upload may stall before 408."),
    inference_timeout: float = typer.Option(60.0, help="Seconds a request waits for its result before 504."),
    shutdown_timeout: float = typer.Option(15.0, help="On SIGTERM, seconds to finish in-flight requests."),
    records: str = typer.Option(None, help="Record every /inspect in this store (a folder or a database URL); "
                                           "adds /records and the review page /review."),
    records_images: Path = typer.Option(None, help="Image folder of a database-URL record store."),
    source: str = typer.Option("", help="Default line/station tag for records (a request's ?source= wins)."),
) -> None:
    """Serve the model: POST /inspect, GET /health /ready /metrics /model, API docs at /docs, page at /."""
    import uvicorn

    app = create_app(run, ServeConfig(api_key=api_key, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                                      engine=engine, device=device, max_model_pixels=max_model_pixels,
                                      queue_size=queue_size,
                                      body_timeout_s=body_timeout, inference_timeout_s=inference_timeout),
                     records=records, records_images=records_images, source=source)
    if not api_key and not _is_loopback(host):
        log.warning("serving on %s without an API key: anyone who can reach it can use the model", host)
    access = logging.getLogger("defectlab.serve.access")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))  # one JSON object per line
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    typer.echo(f"serving {run} on http://{host}:{port}/ (API docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False,
                timeout_graceful_shutdown=shutdown_timeout, timeout_keep_alive=5)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
