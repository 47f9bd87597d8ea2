"""The service under stress and failure: readiness, back-pressure, timeouts, stalled uploads vs shutdown,
large images reduced on load, EXIF orientation, the per-request log line. Every wait has a deadline."""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from defectlab.serve import ServeConfig, create_app
from tests.test_inspect_fixtures import cli_server, detector, fitted_run, live_server, sample_images


@pytest.fixture(scope="module")
def run(synthetic_object: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fitted_run(synthetic_object, tmp_path_factory)


def post(base: str, data: bytes, name: str = "x.png", **kw) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(f"{base}/inspect", files={"file": (name, data)}, timeout=60, **kw)


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


class Gated:
    """The real detector, holding each prediction until ``release`` is set (deadline 30 s)."""

    def __init__(self, det) -> None:  # type: ignore[no-untyped-def]
        self.det, self.release, self.entered = det, threading.Event(), threading.Event()

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.det, name)

    def predict_images(self, images, *, batch_size=8):  # type: ignore[no-untyped-def]
        self.entered.set()
        assert self.release.wait(30), "test never released the engine"
        return self.det.predict_images(images, batch_size=batch_size)


def test_ready_fails_with_503_when_scoring_fails(run: Path, synthetic_object: Path) -> None:
    from defectlab.anomaly.detector import Thresholds

    broken = copy.copy(detector(run))
    broken.thresholds = Thresholds(image="0.5", pixel=1.0, rule="hand-edited")  # type: ignore[arg-type]
    nan = copy.copy(detector(run))
    nan.thresholds = Thresholds(image=float("nan"), pixel=1.0, rule="hand-edited")
    for engine, detail in ((broken, "TypeError"), (nan, "nan")):
        with live_server(create_app(engine, ServeConfig())) as base:
            assert httpx.get(f"{base}/health").status_code == 200  # alive...
            r = httpx.get(f"{base}/ready", timeout=60)  # ...but not ready
            assert r.status_code == 503 and r.json()["status"] == "not ready" and detail in r.json()["detail"]
            assert r.headers["retry-after"]
    with live_server(create_app(detector(run), ServeConfig())) as base:
        assert httpx.get(f"{base}/ready", timeout=60).status_code == 200


def test_queue_full_503_and_inference_timeout_504(run: Path, synthetic_object: Path) -> None:
    good = sample_images(synthetic_object)["good_a"].read_bytes()
    engine = Gated(detector(run))
    app = create_app(engine, ServeConfig(queue_size=1, inference_timeout_s=1.0))
    with live_server(app) as base:
        results: list[httpx.Response] = []
        first = threading.Thread(target=lambda: results.append(post(base, good)))
        first.start()
        assert engine.entered.wait(30)
        busy = post(base, good)  # the one admitted slot is taken
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "busy" in busy.json()["detail"]
        first.join(30)
        assert results[0].status_code == 504 and "did not finish" in results[0].json()["detail"]
        engine.release.set()
        deadline = time.monotonic() + 30
        while (r := post(base, good)).status_code != 200:  # the worker finishes the late one, then serves
            assert time.monotonic() < deadline, r.text
        metrics = httpx.get(f"{base}/metrics").text
        assert 'defectlab_requests_total{path="/inspect",status="503"} 1.0' in metrics
        assert 'defectlab_verdicts_total{verdict="good"}' in metrics


def _stalled_upload(port: int, declared: int = 100_000) -> socket.socket:
    """Send the headers and a few bytes of a multipart upload, then nothing."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"POST /inspect HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
              f"Content-Length: {declared}\r\n\r\n--b\r\n".encode())
    return s


def test_stalled_upload_gets_408(run: Path) -> None:
    with live_server(create_app(detector(run), ServeConfig(body_timeout_s=0.5))) as base:
        s = _stalled_upload(int(base.rsplit(":", 1)[1]))
        with s:
            reply = b""
            while chunk := s.recv(4096):  # the server closes the connection; socket timeout 30 s
                reply += chunk
            reply = reply.decode()
        assert reply.startswith("HTTP/1.1 408") and "upload stalled" in reply


def test_sigterm_finishes_with_stalled_uploads(run: Path) -> None:
    with cli_server(run, "--body-timeout", "20", "--shutdown-timeout", "2") as (proc, port):
        stalled = [_stalled_upload(port) for _ in range(20)]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)  # body timeout is 20 s: the shutdown bound (2 s), not the uploads, ends it
        assert time.monotonic() - t0 < 12
        for s in stalled:
            s.close()


def test_large_image_reduced_on_load_and_exif_applied(run: Path, synthetic_object: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    hole = Image.open(sample_images(synthetic_object)["hole"]).convert("RGB")
    big = hole.resize((3000, 3000), Image.NEAREST)  # 9 Mpx: 550x the model's 64x64 input
    with live_server(create_app(detector(run), ServeConfig(max_upload_mb=20))) as base:
        with caplog.at_level(logging.INFO, logger="defectlab.serve.access"):  # open until the line is in
            r = post(base, encode(big, "JPEG", quality=90), "big.jpg", headers={"X-Request-ID": "line-7"})
            deadline = time.monotonic() + 30  # the line is written just after the response is sent
            while not (line := [json.loads(rec.getMessage()) for rec in caplog.records
                                if "line-7" in rec.getMessage()]) and time.monotonic() < deadline:
                time.sleep(0.02)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["width"], body["height"]) == (3000, 3000) and body["verdict"] == "defect"
        heat = Image.open(io.BytesIO(__import__("base64").b64decode(body["heatmap_png"])))
        assert heat.width * heat.height <= 4 * 64 * 64 * 4  # rendered at the reduced size, not 9 Mpx
        assert body["boxes"]
        for x0, y0, x1, y1 in body["boxes"]:
            assert 0 <= x0 < x1 <= 3000 and 0 <= y0 < y1 <= 3000
        assert line and line[0]["verdict"] == "defect" and line[0]["status"] == 200
        assert line[0]["model"] == body["model"] and line[0]["latency_ms"] > 0
        assert line[0]["ts"].endswith("+00:00")
        # EXIF orientation 6 (rotate 90 degrees clockwise to view): the response is in the viewing frame
        wide = hole.resize((128, 96))
        exif = Image.Exif()
        exif[0x0112] = 6
        r = post(base, encode(wide, "JPEG", quality=95, exif=exif.tobytes()), "turned.jpg")
        assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (96, 128)


def test_decode_of_a_huge_jpeg_stays_small(tmp_path: Path) -> None:
    """6000x6000 JPEG (36 Mpx) decoded for a 256 px model: draft mode + reduce, peak memory far below a full
    decode (108 MB), measured in a fresh process (no torch)."""
    path = tmp_path / "huge.jpg"
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (600, 600, 3), dtype=np.uint8))
    small.resize((6000, 6000)).save(path, quality=80)
    code = f"""
import resource
from defectlab.data.io import decode_for_model
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
d = decode_for_model({str(path)!r}, fit=lambda w, h: (256, 256), max_work_pixels=4 * 256 * 256)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(d.width, d.height, d.image.width, d.image.height, (peak - base) // 1024)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    w, h, rw, rh, grew_mb = map(int, out.stdout.split())
    assert (w, h) == (6000, 6000) and 256 <= rw <= 512 and 256 <= rh <= 512
    assert grew_mb < 40, f"decode grew the process by {grew_mb} MB"


def test_page_legend_matches_the_renderer() -> None:
    """The page says: blue = 0, green = the pixel threshold, red = twice it; the renderer agrees."""
    from importlib import resources

    from defectlab.anomaly.base import Prediction
    from defectlab.inspect.render import overlay

    page = resources.files("defectlab.serve").joinpath("page.html").read_text()
    assert "red = twice it or more" in page and "red = above threshold" not in page
    amap = np.zeros((4, 12), np.float32)
    amap[:, 4:8], amap[:, 8:] = 1.0, 2.0  # 0, the threshold, twice the threshold
    pred = Prediction("x", 0.0, 1.0, False, amap, [], {"pixel_threshold": 1.0})
    rgb = np.asarray(overlay(Image.new("RGB", (12, 4)), pred, alpha=1.0)).astype(int)
    zero, at, twice = rgb[0, 0], rgb[0, 5], rgb[0, 10]
    assert zero[2] > zero[0] and zero[2] > zero[1]  # blue
    assert at[1] > 200 and at[1] > at[0] + 80 and at[1] > at[2] + 80  # green
    assert twice[0] > 100 and twice[0] > 2 * twice[1] and twice[0] > 2 * twice[2]  # red
