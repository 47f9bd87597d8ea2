"""The HTTP service, started for real (uvicorn on 127.0.0.1, a free port): round trips, refusals, load."""

from __future__ import annotations

import base64
import io
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from defectlab.records import model_version
from defectlab.serve import ServeConfig, create_app
from tests.test_inspect_fixtures import cli_server, detector, fitted_run, live_server, sample_images

KEY = "s3cret-test-key"
LIMITS = ServeConfig(api_key=KEY, max_upload_mb=0.25, max_pixels=600_000)


@pytest.fixture(scope="module")
def run(synthetic_object: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fitted_run(synthetic_object, tmp_path_factory)


@pytest.fixture(scope="module")
def base(run: Path):  # type: ignore[no-untyped-def]
    with live_server(create_app(detector(run), LIMITS)) as url:
        yield url


def post(base: str, data: bytes, name: str = "x.png", key: str | None = KEY, **params: str) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    return httpx.post(f"{base}/inspect", files={"file": (name, data, "application/octet-stream")},
                      headers=headers, params=params, timeout=60)


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_round_trip_good_and_defect(base: str, run: Path, synthetic_object: Path) -> None:
    imgs = sample_images(synthetic_object)
    for name, verdict in (("good_a", "good"), ("hole", "defect"), ("scratch", "defect"), ("good_b", "good")):
        r = post(base, imgs[name].read_bytes(), name=f"{name}.png")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["verdict"] == verdict and body["is_defect"] == (verdict == "defect"), (name, body["score"])
        direct = detector(run).predict_images([imgs[name]])[0]
        assert abs(body["score"] - direct.score) < 1e-5 and body["threshold"] == pytest.approx(direct.threshold)
        assert [list(b) for b in body["boxes"]] == [list(b) for b in direct.boxes]
        assert (body["width"], body["height"], body["filename"]) == (128, 128, f"{name}.png")
        assert body["model"] == r.headers["x-defectlab-model"] and body["request_id"] == r.headers["x-request-id"]
        heat = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"])))
        assert heat.format == "PNG" and heat.size == (128, 128)
    # JPEG upload and the heatmap-only variant
    buf = io.BytesIO()
    Image.open(imgs["hole"]).convert("RGB").save(buf, format="JPEG", quality=95)
    r = post(base, buf.getvalue(), name="hole.jpg", heatmap="false")
    assert r.status_code == 200 and r.json()["verdict"] == "defect" and r.json()["heatmap_png"] is None
    r = httpx.post(f"{base}/inspect/heatmap", files={"file": ("h.png", imgs["hole"].read_bytes())},
                   headers={"X-API-Key": KEY}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-defectlab-verdict"] == "defect" and Image.open(io.BytesIO(r.content)).size == (128, 128)


def test_health_model_openapi_page(base: str, run: Path) -> None:
    h = httpx.get(f"{base}/health").json()
    assert h["status"] == "ok" and h["auth_required"] is True and h["engine"] == "torch"
    m = httpx.get(f"{base}/model", headers={"X-API-Key": KEY}).json()
    assert m["method"] == "patchcore" and m["backbone"] == "efficientnet_lite0" and m["image_size"] == [64, 64]
    assert m["thresholds"]["image"] > 0 and m["training"]["n_fit"] > 0
    assert m["limits"]["max_upload_bytes"] == int(0.25 * 2**20) and m["limits"]["max_pixels"] == 600_000
    assert m["limits"]["max_model_pixels"] == 4 * 64 * 64 and m["min_input_side"] == 33  # sigma 8
    assert "/" not in m["training"]["data"] and str(m).count("/tmp") == 0  # no server paths shown
    # one version string per model: the records (defectlab.records.model_version) carry the same one
    assert m["version"] == h["model"] == model_version(detector(run)) and h["model"].startswith("patchcore-")
    r = httpx.get(f"{base}/ready")
    assert r.status_code == 200 and r.json()["status"] == "ready" and r.headers["x-defectlab-model"] == h["model"]
    metrics = httpx.get(f"{base}/metrics").text
    for name in ("defectlab_requests_total", "defectlab_request_seconds_bucket", "defectlab_queue_depth",
                 "process_resident_memory_bytes"):
        assert name in metrics, name
    docs = httpx.get(f"{base}/docs")
    assert docs.status_code == 200 and "openapi.json" in docs.text
    assert "http://" not in docs.text and "https://" not in docs.text  # works offline: no CDN assets
    schema = httpx.get(f"{base}/openapi.json").json()
    assert {"/inspect", "/inspect/heatmap", "/health", "/ready", "/metrics", "/model"} <= set(schema["paths"])
    assert "X-API-Key" in str(schema["components"]["securitySchemes"])
    page = httpx.get(f"{base}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    # self-contained: no external scripts, styles or images
    assert "http://" not in page.text and "https://" not in page.text and 'id="heatmap"' in page.text


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height with a few bytes of (deflated, all-zero) data."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + tag + data + zlib.crc32(tag + data).to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    idat = zlib.compress(b"\x00" * (width + 1) * 16, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("case, status, message", [
    ("too_big", 413, "upload too large"),
    ("too_many_pixels", 413, "the limit is 600000"),
    ("bomb", 413, "pixels"),
    ("not_image", 415, "not an image"),
    ("truncated", 422, "truncated"),
    ("empty", 400, "empty upload"),
    ("no_key", 401, "API key"),
    ("wrong_key", 401, "API key"),
])
def test_bad_uploads_get_their_4xx(base: str, synthetic_object: Path, case: str, status: int, message: str) -> None:
    good = sample_images(synthetic_object)["good_a"].read_bytes()
    data, key = good, KEY
    if case == "too_big":
        data = np.random.default_rng(0).integers(0, 255, 400_000, dtype=np.uint8).tobytes()
    elif case == "too_many_pixels":
        data = png_bytes(Image.new("L", (1000, 1000)))  # small file, 1e6 pixels
        assert len(data) < 0.25 * 2**20
    elif case == "bomb":
        data = _bomb_png(50_000, 50_000)  # 2.5e9 pixels declared in a ~100-byte file
    elif case == "not_image":
        data = b"%PDF-1.4 definitely not an image\n" * 20
    elif case == "truncated":
        data = good[: len(good) // 2]
    elif case == "empty":
        data = b""
    elif case == "no_key":
        key = None
    elif case == "wrong_key":
        key = "guess"
    r = post(base, data, key=key)
    assert r.status_code == status, (case, r.status_code, r.text)
    assert message in r.json()["detail"]
    # the server is still fine afterwards
    assert post(base, good).status_code == 200


def test_too_big_chunked_upload_without_length(base: str) -> None:
    """No Content-Length (chunked transfer): the limit is enforced while the body streams in."""
    boundary = "defectlabtestboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def body():  # type: ignore[no-untyped-def]
        yield head
        for _ in range(40):
            yield b"\0" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    r = httpx.post(f"{base}/inspect", content=body(), timeout=60,
                   headers={"X-API-Key": KEY, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "upload too large" in r.json()["detail"]


def test_missing_field_and_model_needs_key(base: str) -> None:
    r = httpx.post(f"{base}/inspect", data={"other": "x"}, headers={"X-API-Key": KEY})
    assert r.status_code == 422
    assert httpx.get(f"{base}/model").status_code == 401


def test_load_300_requests_8_concurrent(base: str, synthetic_object: Path) -> None:
    imgs = [p.read_bytes() for p in sample_images(synthetic_object).values()]
    expected = {0: "good", 1: "good", 2: "defect", 3: "defect"}
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=8)) as client:
        def one(i: int) -> tuple[int, str, float]:
            t0 = time.perf_counter()
            r = client.post(f"{base}/inspect", files={"file": (f"{i}.png", imgs[i % 4])},
                            headers={"X-API-Key": KEY}, params={"heatmap": "true" if i % 2 else "false"})
            return r.status_code, r.json().get("verdict", r.text), time.perf_counter() - t0

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(300)))
    errors = [(i, s, v) for i, (s, v, _) in enumerate(results) if s != 200 or v != expected[i % 4]]
    assert errors == []


def test_cli_serve_subprocess_binds_loopback(run: Path) -> None:
    with cli_server(run, env={"DEFECTLAB_API_KEY": KEY}) as (proc, port):
        r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert r.json()["auth_required"] is True  # the key came from the environment
        proc.terminate()
        proc.wait(timeout=20)
