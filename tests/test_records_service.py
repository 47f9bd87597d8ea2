"""Recording from the CLI ``inspect`` and from the service's ``/inspect`` (SQLite and PostgreSQL), the
records / review API with the token on, and the loop closed: export-dataset -> refit -> new version."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

from defectlab.cli import main
from defectlab.records import check, model_version, open_store
from defectlab.serve import ServeConfig, create_app
from tests.records_pg import create_database
from tests.test_inspect_fixtures import copy_images, detector, fitted_run, live_server, sample_images
from tests.test_records import pg_base  # noqa: F401 - the session's PostgreSQL server fixture

KEY = "records-key"


@pytest.fixture(scope="module")
def run(synthetic_object: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fitted_run(synthetic_object, tmp_path_factory)


def test_cli_inspect_records_every_image(
    run: Path, synthetic_object: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    copy_images(sample_images(synthetic_object), folder)
    (folder / "broken.png").write_bytes(b"not a png")
    store_dir = tmp_path / "store"
    args = [
        "inspect",
        str(run),
        str(folder),
        "--out",
        str(tmp_path / "r.csv"),
        "--records",
        str(store_dir),
        "--source",
        "line-3",
    ]
    assert main(args) == 0
    store = open_store(store_dir)
    rows = store.list(limit=100)
    assert sorted(r["image_name"] for r in rows) == ["good_a.png", "good_b.png", "hole.png", "scratch.png"]
    direct = {
        Path(p.path).name: p
        for p in detector(run).predict_images(
            [folder / f"{n}.png" for n in ("good_a", "good_b", "hole", "scratch")]
        )
    }
    version = model_version(detector(run))
    for r in rows:
        p = direct[r["image_name"]]
        assert r["score"] == pytest.approx(p.score, abs=1e-5) and r["verdict"] == (
            "defect" if p.is_defect else "good"
        )
        assert r["source"] == "line-3" and r["origin"] == "cli" and r["model_version"] == version
        assert r["boxes"] == [list(b) for b in p.boxes] and r["latency_ms"] > 0 and r["map_path"]
        assert store.images.path(r["image_path"]).read_bytes() == (folder / r["image_name"]).read_bytes()
    assert main(args) == 0  # resume: nothing new inspected, nothing recorded twice
    assert store.count() == 4
    capsys.readouterr()
    assert main(["records", "list", str(store_dir), "--verdict", "defect"]) == 0
    out = capsys.readouterr().out
    assert "hole.png" in out and "good_a.png" not in out and "2 matching records" in out
    assert main(["records", "export", str(store_dir), str(tmp_path / "all.parquet")]) == 0
    assert main(["records", "check", str(store_dir)]) == 0
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([*args[:-4], "--records", str(blocker / "store")]) == 2  # a store path that is not writable
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create the record store folder" in err[0]
    assert main(["records", "list", str(tmp_path / "typo")]) == 2 and not (tmp_path / "typo").exists()
    assert "no record store here" in capsys.readouterr().err
    assert main(["records", "list", str(store_dir), "--since", "yesterday"]) == 2


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_service_records_review_and_token(
    run: Path, synthetic_object: Path, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        store = open_store(tmp_path / "store")
    else:
        base = request.getfixturevalue("pg_base")
        if base is None:
            pytest.skip("PostgreSQL not available here")
        store = open_store(
            create_database(base, f"svc_{tmp_path.name[-20:]}".replace("-", "_")), images=tmp_path / "img"
        )
    imgs = sample_images(synthetic_object)
    h = {"X-API-Key": KEY}
    with live_server(
        create_app(detector(run), ServeConfig(api_key=KEY), records=store, source="cell-A")
    ) as url:
        for name in ("good_a", "hole", "scratch", "good_b"):
            r = httpx.post(
                f"{url}/inspect",
                files={"file": (f"{name}.png", imgs[name].read_bytes())},
                headers=h,
                params={"source": "cell-B"} if name == "scratch" else {},
                timeout=60,
            )
            assert r.status_code == 200, r.text
        assert (
            httpx.post(
                f"{url}/inspect/heatmap",
                files={"file": ("g.png", imgs["good_a"].read_bytes())},
                headers=h,
                timeout=60,
            ).status_code
            == 200
        )
        # the token guards every route that reads or writes records; the page itself holds no data
        for method, path in (
            ("GET", "/records"),
            ("GET", "/records/1"),
            ("GET", "/records/1/image"),
            ("GET", "/review/queue"),
            ("POST", "/records/1/review"),
        ):
            assert httpx.request(method, url + path, json={}, timeout=30).status_code == 401, path
        assert httpx.get(f"{url}/review", timeout=30).status_code == 200
        page = httpx.get(f"{url}/records", params={"limit": 2}, headers=h, timeout=30).json()
        assert len(page["items"]) == 2 and page["next"] == page["items"][-1]["id"]
        rest = httpx.get(
            f"{url}/records", params={"limit": 10, "before": page["next"]}, headers=h, timeout=30
        ).json()
        items = page["items"] + rest["items"]
        assert rest["next"] is None and len(items) == 5
        assert [i["image_name"] for i in items] == [
            "g.png",
            "good_b.png",
            "scratch.png",
            "hole.png",
            "good_a.png",
        ]
        assert {i["source"] for i in items} == {"cell-A", "cell-B"} and {i["origin"] for i in items} == {
            "service"
        }
        hole = items[3]
        assert hole["verdict"] == "defect"
        got = httpx.get(f"{url}/records/{hole['id']}/image", headers=h, timeout=30)
        assert got.content == imgs["hole"].read_bytes()
        heat = httpx.get(f"{url}/records/{hole['id']}/heatmap", headers=h, timeout=30)
        assert heat.headers["content-type"] == "image/png"
        queue = httpx.get(f"{url}/review/queue", headers=h, timeout=30).json()
        assert hole["id"] in [i["id"] for i in queue["items"]] and queue["total"] == len(queue["items"])
        # review, then a stale review from a second reviewer: 409 with the current state
        ok = httpx.post(
            f"{url}/records/{hole['id']}/review",
            headers=h,
            timeout=30,
            json={"label": "defect", "reviewer": "ann", "version": 1, "type": "hole"},
        )
        assert ok.status_code == 200 and ok.json()["version"] == 2 and ok.json()["review_type"] == "hole"
        stale = httpx.post(
            f"{url}/records/{hole['id']}/review",
            headers=h,
            timeout=30,
            json={"label": "good", "reviewer": "bob", "version": 1},
        )
        assert stale.status_code == 409
        assert stale.json()["current"]["reviewer"] == "ann" and stale.json()["current"]["version"] == 2
        after = httpx.get(f"{url}/review/queue", headers=h, timeout=30).json()
        assert hole["id"] not in [i["id"] for i in after["items"]] and after["total"] == queue["total"] - 1
        # bad input: clear 4xx, nothing changes
        before = httpx.get(f"{url}/records/{hole['id']}", headers=h, timeout=30).json()
        for body in (
            {"label": "defect"},
            {"label": "maybe", "reviewer": "x", "version": 2},
            {"label": "defect", "reviewer": "x", "version": 2, "regions": [{"box": [0, 0, 999, 5]}]},
            {"label": "good", "reviewer": "x", "version": "two"},
            {"label": "good", "reviewer": "x", "version": 2, "extra": 1},
        ):
            r = httpx.post(f"{url}/records/{hole['id']}/review", headers=h, json=body, timeout=30)
            assert r.status_code == 422, (body, r.text)
        r = httpx.post(f"{url}/records/{hole['id']}/review", headers=h, content=b"{not json", timeout=30)
        assert r.status_code == 422
        assert httpx.get(f"{url}/records/{hole['id']}", headers=h, timeout=30).json() == before
        assert len(before["reviews"]) == 1
        for path in ("/records/999999", "/records/999999/image"):
            assert httpx.get(url + path, headers=h, timeout=30).status_code == 404
        assert (
            httpx.post(
                f"{url}/records/999999/review",
                headers=h,
                timeout=30,
                json={"label": "good", "reviewer": "x", "version": 1},
            ).status_code
            == 404
        )
        assert (
            httpx.get(f"{url}/records", params={"verdict": "meh"}, headers=h, timeout=30).status_code == 422
        )
    assert store.count() == 5 and check(store)["ok"]
    store.close()


def test_export_dataset_refit_and_new_version_recorded(
    run: Path, synthetic_object: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reviewed records -> MVTec dataset -> `records refit` -> the new run's version in later records."""
    folder = tmp_path / "line"
    goods = sorted((synthetic_object / "train" / "good").glob("*.png"))[:12]
    for p in goods:
        shutil.copy(p, folder / "good" / p.name) if (folder / "good").is_dir() else (
            (folder / "good").mkdir(parents=True),
            shutil.copy(p, folder / "good" / p.name),
        )
    holes = sorted((synthetic_object / "test" / "hole").glob("*.png"))[:3]
    for p in holes:
        (folder / "hole").mkdir(exist_ok=True)
        shutil.copy(p, folder / "hole" / p.name)
    store_dir = tmp_path / "store"
    assert (
        main(
            ["inspect", str(run), str(folder), "--out", str(tmp_path / "a.csv"), "--records", str(store_dir)]
        )
        == 0
    )
    store = open_store(store_dir)
    from defectlab.records import ReviewInput, apply_review

    for r in store.list(limit=100):
        if r["image_name"].startswith("hole/"):
            x0, y0, x1, y1 = (r["boxes"] or [[40, 40, 80, 80]])[0]
            apply_review(
                store,
                r["id"],
                ReviewInput("defect", "qe", r["version"], "hole", [{"box": [x0, y0, x1, y1], "mask": "map"}]),
            )
        else:
            apply_review(store, r["id"], ReviewInput("good", "qe", r["version"]))
    ds = tmp_path / "ds"
    assert main(["records", "export-dataset", str(store_dir), str(ds)]) == 0
    assert len(list((ds / "train" / "good").glob("*.png"))) == 12
    tests = sorted((ds / "test" / "hole").glob("*.png"))
    masks = sorted((ds / "ground_truth" / "hole").glob("*_mask.png"))
    assert len(tests) == len(masks) == 3 and [m.name for m in masks] == [t.stem + "_mask.png" for t in tests]
    for t, m in zip(tests, masks, strict=True):
        mask = Image.open(m)
        assert (
            mask.size == Image.open(t).size and 0 < sum(v > 0 for v in mask.get_flattened_data()) < 128 * 128
        )
    from defectlab.data.index import open_dataset

    index = open_dataset(ds)
    assert len(index.select(split="train")) == 12 and len(index.select(split="test")) == 3
    assert (
        main(["records", "export-dataset", str(store_dir), str(tmp_path / "coco"), "--format", "coco"]) == 0
    )
    import json

    coco = json.loads((tmp_path / "coco" / "annotations" / "instances_train.json").read_text())
    assert len(coco["images"]) == 15 and [c["name"] for c in coco["categories"]] == ["hole"]
    assert len(coco["annotations"]) >= 3
    new_run = tmp_path / "run2"
    assert main(["records", "refit", str(store_dir), "--like", str(run), "--out", str(new_run)]) == 0
    assert (
        main(
            [
                "inspect",
                str(new_run),
                str(folder / "hole"),
                "--out",
                str(tmp_path / "b.csv"),
                "--records",
                str(store_dir),
            ]
        )
        == 0
    )
    versions = {r["model_version"] for r in store.list(limit=100)}
    from defectlab.anomaly.detector import Detector

    assert (
        versions == {model_version(detector(run)), model_version(Detector.load(new_run))}
        and len(versions) == 2
    )
    assert store.count() == 18 and check(store)["ok"]


def test_inspect_answers_503_when_the_record_cannot_be_written(run: Path, synthetic_object: Path,
                                                               tmp_path: Path) -> None:
    from sqlalchemy import text

    from defectlab.serve.limits import decode_upload

    store = open_store(tmp_path / "store")
    engine = detector(run)
    with live_server(create_app(engine, ServeConfig(), records=store)) as url:
        png = sample_images(synthetic_object)["hole"].read_bytes()
        assert httpx.post(f"{url}/inspect", files={"file": ("a.png", png)}, timeout=60).status_code == 200
        # an image reduced on load: the record keeps the file's own size, as the response does
        buf = io.BytesIO()
        Image.open(io.BytesIO(png)).convert("RGB").resize((1000, 760)).save(buf, format="PNG")
        big = buf.getvalue()
        reduced = decode_upload(big, max_pixels=10**7, fit=engine.input_size,
                                max_work_pixels=engine.model_pixel_budget).image
        assert reduced.width < 1000  # the service scores it reduced
        r = httpx.post(f"{url}/inspect", files={"file": ("big.png", big)}, timeout=60)
        assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (1000, 760)
        item = store.list(limit=1)[0]
        assert item["image_name"] == "big.png" and (item["width"], item["height"]) == (1000, 760)
        assert item["model_version"] == r.json()["model"]  # one version string everywhere
        with store.engine.begin() as conn:  # the table disappears under the running service
            conn.execute(text("ALTER TABLE inspections RENAME TO gone"))
        r = httpx.post(f"{url}/inspect", files={"file": ("b.png", png)}, timeout=60)
        assert r.status_code == 503 and "inspection not recorded" in r.json()["detail"]
        assert len(r.json()["detail"].splitlines()) == 1
