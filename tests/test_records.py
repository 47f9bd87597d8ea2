"""The record store on SQLite and on a real PostgreSQL server (skipped only where it cannot start):
schema creation and migration, recording, filters and table export, review conflicts, bad input."""

from __future__ import annotations

import io
import itertools
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import inspect, text

from defectlab.errors import BadInputError, ConfigError
from defectlab.records import (
    BadReview,
    NewRecord,
    RecordFilter,
    ReviewConflict,
    ReviewInput,
    UnknownRecord,
    apply_review,
    check,
    export_table,
    history,
    open_store,
)
from defectlab.records.schema import current_revision, make_engine, migrate
from tests.records_pg import create_database, postgres_server

_DB = itertools.count()


@pytest.fixture(scope="session")
def pg_base():  # type: ignore[no-untyped-def]
    with postgres_server() as base:
        yield base


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file or a new database on the throwaway PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'records.sqlite'}"
    base = request.getfixturevalue("pg_base")
    if base is None:
        pytest.skip("PostgreSQL not available here (apt-get install -y postgresql)")
    return create_database(base, f"records_{next(_DB)}")


def png(colour: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (colour, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def rec(i: int, **kw) -> NewRecord:  # type: ignore[no-untyped-def]
    base = dict(
        image_name=f"part_{i}.png",
        image=png(i),
        width=16,
        height=16,
        model_version="m1",
        score=0.5 + 0.1 * i,
        threshold=1.0,
        verdict="defect" if 0.5 + 0.1 * i > 1.0 else "good",
        latency_ms=5.0,
        source="line1",
        boxes=[[2, 2, 8, 8]] if 0.5 + 0.1 * i > 1.0 else [],
    )
    base.update(kw)
    return NewRecord(**base)


def test_schema_created_and_migrated_with_data(db_url: str, tmp_path: Path) -> None:
    engine = make_engine(db_url)
    migrate(engine, "0001")
    assert current_revision(engine) == "0001"
    assert "reviews" not in inspect(engine).get_table_names()
    with engine.begin() as conn:  # a row written by the first schema
        conn.execute(
            text(
                "INSERT INTO inspections (created_at, source, origin, image_name, image_sha256, image_path,"
                " width, height, model_version, score, threshold, verdict, boxes, latency_ms, priority,"
                " review_state) VALUES (:t, 'old', 'cli', 'old.png', :sha, 'ab/x.png', 4, 4, 'm0', 2.0,"
                " 1.0, 'defect', '[]', 1.0, 0.5, 'queued')"
            ),
            {"t": datetime.now(UTC), "sha": "ab" * 32},
        )
    engine.dispose()
    store = open_store(db_url, images=tmp_path / "img")  # migrates to head
    assert current_revision(store.engine) == "0002"
    assert {"inspections", "reviews", "alembic_version"} <= set(inspect(store.engine).get_table_names())
    old = store.get(1)
    assert old is not None and old["version"] == 1 and old["review_label"] is None and old["source"] == "old"
    # the migrated schema is exactly what the models describe (no drift between migrations and models)
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from defectlab.records.models import Base

    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    # a new row after migration, reviewed end to end
    rid = store.record(rec(9))
    assert apply_review(store, rid, ReviewInput("good", "ann", 1))["version"] == 2
    open_store(db_url, images=tmp_path / "img")  # reopening at head is a no-op
    store.close()


def test_record_filter_page_and_export(db_url: str, tmp_path: Path) -> None:
    store = open_store(db_url, images=tmp_path / "img")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    ids = store.record_many(
        [
            rec(
                i,
                created_at=t0 + timedelta(hours=i),
                type="unknown" if i == 3 else None,
                model_version="m2" if i >= 6 else "m1",
            )
            for i in range(10)
        ]
    )
    assert ids == list(range(ids[0], ids[0] + 10))
    # content-addressed images: same bytes, same file; the store keeps the path
    again = store.record(rec(0))
    assert store.get(again)["image_path"] == store.get(ids[0])["image_path"]
    assert store.images.path(store.get(ids[0])["image_path"]).read_bytes() == png(0)
    assert store.count() == 11
    assert [r["id"] for r in store.list(RecordFilter(verdict="defect"))] == ids[:5:-1]  # scores 1.1..1.4
    assert store.count(RecordFilter(since=t0 + timedelta(hours=2), until=t0 + timedelta(hours=5))) == 3
    assert store.count(RecordFilter(model="m2")) == 4 and store.count(RecordFilter(type="unknown")) == 1
    page1 = store.list(limit=4)
    page2 = store.list(limit=4, before=page1[-1]["id"])
    assert [r["id"] for r in page1 + page2] == sorted([again, *ids], reverse=True)[:8]
    # the queue: unknown type first, then nearest the threshold; far-below-threshold goods are not queued
    queue = store.queue(limit=50)
    assert queue[0]["type"] == "unknown"
    margins = [abs(r["score"] - 1.0) for r in queue[1:]]
    assert margins == sorted(margins)
    assert all(
        r["verdict"] == "defect" or abs(r["score"] - 1) <= 0.2 or r["type"] == "unknown" for r in queue
    )
    assert not any(r["id"] == ids[0] for r in queue)  # score 0.5: far below the threshold
    # table export, CSV and Parquet, round trip
    n = export_table(store, tmp_path / "r.csv", RecordFilter(verdict="defect"))
    import csv

    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert n == len(rows) == 4 and json.loads(rows[0]["boxes"]) == [[2, 2, 8, 8]]
    import pyarrow.parquet as pq

    assert export_table(store, tmp_path / "r.parquet") == 11
    table = pq.read_table(tmp_path / "r.parquet")
    assert table.num_rows == 11 and table.column("score").to_pylist()[:2] == pytest.approx([0.5, 0.6])
    assert check(store)["ok"]
    store.close()


def test_concurrent_reviews_never_overwrite(db_url: str, tmp_path: Path) -> None:
    store = open_store(db_url, images=tmp_path / "img")
    rid = store.record(rec(7))
    results: list[object] = []
    barrier = threading.Barrier(4)

    def review(name: str, label: str) -> None:
        barrier.wait()
        try:
            results.append(
                apply_review(store, rid, ReviewInput(label, name, 1, "crack" if label == "defect" else None))
            )
        except ReviewConflict as exc:
            results.append(exc)

    threads = [
        threading.Thread(target=review, args=(f"r{i}", "defect" if i % 2 else "good")) for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    won = [r for r in results if isinstance(r, dict)]
    lost = [r for r in results if isinstance(r, ReviewConflict)]
    assert len(won) == 1 and len(lost) == 3
    now = store.get(rid)
    assert now["version"] == 2 and now["reviewer"] == won[0]["reviewer"]
    assert all(c.current["version"] == 2 and c.current["reviewer"] == now["reviewer"] for c in lost)
    assert [h["reviewer"] for h in history(store, rid)] == [now["reviewer"]]
    # the second reviewer, having seen the conflict, reviews on top of version 2
    after = apply_review(store, rid, ReviewInput("defect", "lead", 2, "scratch", [{"box": [0, 0, 4, 4]}]))
    assert after["version"] == 3 and after["review_type"] == "scratch"
    assert [h["version"] for h in history(store, rid)] == [2, 3]
    assert check(store)["ok"]
    store.close()


@pytest.mark.parametrize(
    "review, problem",
    [
        (ReviewInput("maybe", "ann", 1), "label"),
        (ReviewInput("good", "", 1), "reviewer"),
        (ReviewInput("good", "ann", 0), "version"),
        (ReviewInput("good", "ann", 1, "crack"), "good"),
        (ReviewInput("defect", "ann", 1, "../x"), "type"),
        (ReviewInput("defect", "ann", 1, "crack", [{"box": [0, 0, 99, 4]}]), "outside"),
        (ReviewInput("defect", "ann", 1, "crack", [{"box": [4, 4, 4, 8]}]), "empty"),
        (ReviewInput("defect", "ann", 1, "crack", [{"box": [0, 0, 4]}]), "4 integers"),
        (ReviewInput("defect", "ann", 1, "crack", [{"box": [0, 0, 4, 4], "mask": "blob"}]), "mask"),
    ],
)
def test_malformed_review_changes_nothing(tmp_path: Path, review: ReviewInput, problem: str) -> None:
    store = open_store(tmp_path / "store")
    rid = store.record(rec(7))
    before = store.get(rid)
    with pytest.raises(BadReview, match=problem):
        apply_review(store, rid, review)
    assert store.get(rid) == before and history(store, rid) == []
    with pytest.raises(UnknownRecord):
        apply_review(store, rid + 100, ReviewInput("good", "ann", 1))


def test_bad_store_paths_are_one_line_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(BadInputError, match="cannot create the record store folder"):
        open_store(blocker / "store")
    with pytest.raises(ConfigError, match="image folder"):
        open_store("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(BadInputError, match="cannot open or migrate"):
        open_store("postgresql://nobody@127.0.0.1:1/none", images=tmp_path / "img")
    with pytest.raises(ConfigError, match="verdict"):
        RecordFilter(verdict="bad")


def test_group_writer_commits_concurrent_requests_once_each(db_url: str, tmp_path: Path) -> None:
    """The service's writer: 40 requests from 8 threads each get their own committed id (rows grouped into
    fewer transactions when they queue up); a row that cannot be built fails only its own request; a
    transaction the database refuses fails each of its requests and stores none, and the writer recovers
    on a fresh connection."""
    from concurrent.futures import ThreadPoolExecutor

    from defectlab.records.writer import GroupWriter

    store = open_store(db_url, images=tmp_path / "img")
    writer = GroupWriter(store)
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = list(pool.map(lambda i: writer.submit(lambda: store.row(rec(i))), range(40)))
        ids = [f.result(30) for f in futures]
        assert len(set(ids)) == 40 and store.count() == 40 and writer.rows == 40 and writer.groups <= 40
        by_id = {r["id"]: r["image_name"] for chunk in store.iter_rows() for r in chunk}
        assert [by_id[i] for i in ids] == [f"part_{i}.png" for i in range(40)]  # each id is its own row

        def broken() -> dict:
            raise ValueError("no map")

        bad, good = writer.submit(broken), writer.submit(lambda: store.row(rec(41)))
        with pytest.raises(BadInputError, match="record not built"):
            bad.result(30)
        assert store.get(good.result(30))["image_name"] == "part_41.png"
        with store.engine.begin() as conn:  # the table disappears under the running writer
            conn.execute(text("ALTER TABLE inspections RENAME TO gone"))
        lost = writer.submit(lambda: store.row(rec(42)))
        with pytest.raises(BadInputError, match="record store write failed"):
            lost.result(30)
        with store.engine.begin() as conn:
            conn.execute(text("ALTER TABLE gone RENAME TO inspections"))
        assert store.get(writer.submit(lambda: store.row(rec(43))).result(30))["image_name"] == "part_43.png"
        assert store.count() == 42 and check(store)["ok"]
    finally:
        writer.close()
        store.close()


def test_stored_map_is_reduced_but_cuts_the_same_mask() -> None:
    """The anomaly map is stored at most 4x reduced; scaled back to the image (as the review page and
    export-dataset do), thresholding it at the pixel threshold gives the same region."""
    from scipy.ndimage import gaussian_filter

    from defectlab.anomaly.base import Prediction
    from defectlab.records.recorder import map_png

    rng = np.random.default_rng(0)
    amap = np.zeros((300, 520), np.float32)
    amap[100:160, 200:330] = 3.0  # a defect
    amap = gaussian_filter(amap + rng.random(amap.shape, dtype=np.float32) * 0.3, 6)  # smoothed, as scored
    pred = Prediction("x", 1.0, 1.0, True, amap, [], {"pixel_threshold": 0.8})
    stored = Image.open(io.BytesIO(map_png(pred)))
    assert stored.size == (130, 75)  # reduced by 4
    back = np.asarray(stored.convert("L").resize((520, 300), Image.BILINEAR)) >= 128
    full = amap >= 0.8
    assert full.sum() > 3000 and (back & full).sum() / (back | full).sum() > 0.95
