"""The web page in a real browser: headless Chromium (driven over chromedriver's W3C WebDriver HTTP API
with httpx, no selenium) opens /, uploads an image, and the verdict and the heatmap appear.

The screenshot is saved under the test's tmp dir and, when DEFECTLAB_ARTIFACTS is set, copied there.
Skips cleanly without chromium + chromedriver (Debian: ``apt-get install -y chromium chromium-driver``).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from defectlab.serve import ServeConfig, create_app
from tests.test_inspect_fixtures import detector, fitted_run, free_port, live_server, sample_images

CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--window-size=1200,900"]
ELEMENT = "element-6066-11e4-a52e-4f1d1c13eb9a"  # the W3C WebDriver element reference key


def _find(*names: str) -> str | None:
    return next((p for p in map(shutil.which, names) if p), None)


class WebDriver:
    """Just enough of the W3C WebDriver protocol: session, navigate, find, send keys, execute, screenshot."""

    def __init__(self, driver: str, browser: str, profile: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([driver, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.http.get("/status").json()["value"]["ready"]:
                    break
            except (httpx.TransportError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                pytest.skip("chromedriver did not start")
            time.sleep(0.1)
        caps = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": browser, "args": [*CHROME_ARGS, f"--user-data-dir={profile}"]}}
        value = self.cmd("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
        self.session = value["sessionId"]

    def cmd(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        r = self.http.request(method, path, json=body)
        data = r.json()
        if r.status_code != 200:
            raise RuntimeError(f"webdriver {method} {path}: {data.get('value', data)}")
        return data["value"]

    def s(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.cmd(method, f"/session/{self.session}{path}", body)

    def find(self, css: str) -> str:
        ref = self.s("POST", "/element", {"using": "css selector", "value": css})
        return ref[ELEMENT] if ELEMENT in ref else next(iter(ref.values()))  # legacy key "ELEMENT"

    def js(self, script: str) -> Any:
        return self.s("POST", "/execute/sync", {"script": script, "args": []})

    def close(self) -> None:
        try:
            if getattr(self, "session", None):
                self.cmd("DELETE", f"/session/{self.session}")
        finally:
            self.http.close()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture()
def browser(tmp_path: Path):  # type: ignore[no-untyped-def]
    chrome = _find("chromium", "chromium-browser", "google-chrome")
    driver = _find("chromedriver", "chromium-driver")
    if not chrome or not driver:
        pytest.skip("headless browser test needs chromium and chromedriver "
                    "(apt-get install -y chromium chromium-driver)")
    wd = WebDriver(driver, chrome, tmp_path / "chrome-profile")
    try:
        yield wd
    finally:
        wd.close()


def _wait(wd: WebDriver, script: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = wd.js(script)
        if value:
            return value
        time.sleep(0.2)
    status = wd.js("return document.getElementById('status').textContent")
    raise AssertionError(f"timed out waiting for: {script}; page status: {status}")


@pytest.mark.parametrize("image, verdict", [("hole", "defect"), ("good_a", "good")])
def test_page_upload_shows_verdict_and_heatmap(browser: WebDriver, synthetic_object: Path,
                                               tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
                                               image: str, verdict: str) -> None:
    run = fitted_run(synthetic_object, tmp_path_factory)
    with live_server(create_app(detector(run), ServeConfig())) as base:
        browser.s("POST", "/url", {"url": f"{base}/"})
        assert browser.s("GET", "/title") == "defectlab inspection"
        _wait(browser, "return document.getElementById('model').textContent.includes('patchcore')")
        upload = browser.find("#file")
        path = sample_images(synthetic_object)[image].resolve()
        browser.s("POST", f"/element/{upload}/value", {"text": str(path)})
        shown = _wait(browser, "const v = document.getElementById('verdict').dataset.verdict; "
                               "const h = document.getElementById('heatmap'); "
                               "return v && h.complete && h.naturalWidth > 0 "
                               "? [v, h.naturalWidth, h.naturalHeight] : null")
        assert shown == [verdict, 128, 128]
        assert browser.js("return document.getElementById('verdict').textContent") == verdict.upper()
        assert browser.js("return getComputedStyle(document.getElementById('result')).display") == "flex"
        shot = base64.b64decode(browser.s("GET", "/screenshot"))
    out = tmp_path / f"page_{image}.png"
    out.write_bytes(shot)
    assert Image.open(out).size[0] >= 800
    artifacts = os.environ.get("DEFECTLAB_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(artifacts) / out.name)
