"""Shared by the inspection tests (inspect, serve, onnx, browser): one small fitted PatchCore run per
session, and a real uvicorn server on a free loopback port. Holds no tests itself."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

_CACHE: dict[str, object] = {}

# 64 px, the default backbone (ImageNet EfficientNet-Lite0), 10% coreset; a quarter of train/good held out for the deployable threshold.
RUN_CONFIG = {"model": "patchcore", "image_size": 64, "resize": "squash", "holdout": 0.25,
              "options": {"coreset_ratio": 0.1}}


def fitted_run(synthetic_object: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A detector run folder fitted once per session on ``synthetic_object`` (ONNX export included)."""
    if "run" not in _CACHE:
        from defectlab.anomaly.runner import RunConfig, fit_detector
        from defectlab.config import from_dict
        from defectlab.export.onnx import export_onnx

        run = tmp_path_factory.mktemp("inspect_run")
        det = fit_detector(from_dict(RunConfig, {"data": str(synthetic_object), **RUN_CONFIG}))
        det.save(run)
        export_onnx(run)
        _CACHE["run"] = run
    return _CACHE["run"]  # type: ignore[return-value]


def detector(run: Path):  # type: ignore[no-untyped-def]
    if "det" not in _CACHE:
        from defectlab.anomaly.detector import Detector

        _CACHE["det"] = Detector.load(run)
    return _CACHE["det"]


def sample_images(synthetic_object: Path) -> dict[str, Path]:
    """Named test images: two good, two defective."""
    t = synthetic_object / "test"
    return {"good_a": t / "good" / "000.png", "good_b": t / "good" / "001.png",
            "hole": t / "hole" / "000.png", "scratch": t / "scratch" / "001.png"}


def copy_images(images: dict[str, Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, src in images.items():
        shutil.copy(src, folder / f"{name}{src.suffix}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def cli_server(run: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen, int]]:
    """``defectlab serve RUN ARGS`` as a subprocess on a free loopback port, up (``/health`` answers) within
    90 s; yields (process, port) and kills it afterwards if it still runs."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "defectlab", "serve", str(run), "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"server did not start: {proc.stdout.read() if proc.stdout else ''}")
                time.sleep(0.2)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=20)


@contextmanager
def live_server(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Run ``app`` under uvicorn in a thread on 127.0.0.1:<free port>; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)
