"""The review page in headless Chromium (the WebDriver helper of tests/test_browser.py): load the queue,
review three items with the keyboard, see them leave the queue, export the dataset, check its files.
The server runs with an API key, so the page's key field is exercised too."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

from defectlab.cli import main
from defectlab.records import open_store
from defectlab.serve import ServeConfig, create_app
from tests.test_browser import WebDriver, _wait, browser  # noqa: F401 - the browser fixture
from tests.test_inspect_fixtures import detector, fitted_run, live_server

KEY = "review-key"


def _press(wd: WebDriver, key: str) -> None:
    wd.s(
        "POST",
        "/actions",
        {
            "actions": [
                {
                    "type": "key",
                    "id": "keyboard",
                    "actions": [{"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}],
                }
            ]
        },
    )


def test_review_queue_with_keyboard_then_export(
    browser: WebDriver,  # noqa: F811 - the fixture imported above
    synthetic_object: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    run = fitted_run(synthetic_object, tmp_path_factory)
    store_dir = tmp_path / "store"
    store = open_store(store_dir)
    parts = [synthetic_object / "test" / d / f"00{i}.png" for d in ("hole", "scratch") for i in range(3)]
    with live_server(create_app(detector(run), ServeConfig(api_key=KEY), records=store)) as base:
        for p in parts:
            r = httpx.post(
                f"{base}/inspect",
                files={"file": (f"{p.parent.name}_{p.name}", p.read_bytes())},
                headers={"X-API-Key": KEY},
                params={"heatmap": "false"},
                timeout=60,
            )
            assert r.status_code == 200, r.text
        queued = store.queue_size()
        assert queued >= 4
        browser.s("POST", "/url", {"url": f"{base}/review"})
        assert browser.s("GET", "/title") == "defectlab review"
        # no key yet: the page says so; enter key and reviewer as a person would
        _wait(browser, "return document.getElementById('keybox').style.display !== 'none'")
        browser.js(
            "localStorage.setItem('defectlab-reviewer', 'ann'); sessionStorage.setItem('defectlab-key', "
            f"'{KEY}'); return 1"
        )
        browser.s("POST", "/refresh", {})
        _wait(browser, "return document.body.dataset.loaded === '1' && document.body.dataset.current")
        assert int(browser.js("return document.getElementById('count').textContent")) == queued
        _wait(browser, "const i = document.getElementById('image'); return i.complete && i.naturalWidth > 0")
        done = []
        for n, key in enumerate(("d", "g", "d"), start=1):
            current = int(browser.js("return document.body.dataset.current"))
            _press(browser, key)
            _wait(
                browser,
                f"return document.body.dataset.reviewed === '{n}' && "
                f"!document.body.dataset.queue.split(',').includes('{current}')",
            )
            done.append((current, key))
        assert int(browser.js("return document.getElementById('count').textContent")) == queued - 3
        shot = base64.b64decode(browser.s("GET", "/screenshot"))
        remaining = {int(i) for i in browser.js("return document.body.dataset.queue").split(",") if i}
    assert not remaining & {i for i, _ in done}
    for rid, key in done:
        rec = store.get(rid)
        assert rec["reviewer"] == "ann" and rec["version"] == 2
        assert rec["review_label"] == ("defect" if key == "d" else "good")
    assert store.queue_size() == queued - 3
    out = tmp_path / "dataset"
    assert main(["records", "export-dataset", str(store_dir), str(out)]) == 0
    assert len(list((out / "train" / "good").glob("*.png"))) == 1
    tests = sorted((out / "test").glob("*/*.png"))
    masks = sorted((out / "ground_truth").glob("*/*_mask.png"))
    assert len(tests) == len(masks) == 2
    for t in tests:
        m = out / "ground_truth" / t.parent.name / f"{t.stem}_mask.png"
        assert m.is_file() and Image.open(m).size == Image.open(t).size
        assert t.parent.name not in ("good", "unknown", "")
    png = tmp_path / "review_page.png"
    png.write_bytes(shot)
    assert Image.open(png).size[0] >= 800
    artifacts = os.environ.get("DEFECTLAB_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(artifacts) / png.name)
