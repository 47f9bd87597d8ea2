"""``defectlab serve``: the HTTP inspection service (FastAPI + uvicorn) with its web page at /."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import typer

from defectlab.serve.app import ServeConfig, create_app

log = logging.getLogger(__name__)


def serve(
    run: Path = typer.Argument(..., help="A fitted anomaly run folder."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: str = typer.Option(None, envvar="DEFECTLAB_API_KEY",
                                help="Require this key in the X-API-Key header (or set DEFECTLAB_API_KEY)."),
    max_upload_mb: float = typer.Option(20.0, help="Largest accepted upload, MiB (413 above)."),
    max_pixels: int = typer.Option(40_000_000, help="Largest accepted width x height (413 above)."),
    engine: str = typer.Option("torch", help="torch | onnx (onnx needs `defectlab export onnx RUN` first)."),
    records: str = typer.Option(None, help="Record every /inspect in this store (a folder or a database URL); "
                                           "adds /records and the review page /review."),
    records_images: Path = typer.Option(None, help="Image folder of a database-URL record store."),
    source: str = typer.Option("", help="Default line/station tag for records (a request's ?source= wins)."),
) -> None:
    """Serve the model: POST /inspect, GET /health, GET /model, OpenAPI at /docs, web page at /."""
    import uvicorn

    app = create_app(run, ServeConfig(api_key=api_key, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                                      engine=engine),
                     records=records, records_images=records_images, source=source)
    if not api_key and not _is_loopback(host):
        log.warning("serving on %s without an API key: anyone who can reach it can use the model", host)
    typer.echo(f"serving {run} on http://{host}:{port}/ (API docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level="info")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
