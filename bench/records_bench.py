"""Inspection records: what recording costs, whether a loaded (and killed) server keeps every record, and
how the store answers at a million rows. SQLite and PostgreSQL (a throwaway cluster, as in the tests).

    $VENV/bin/python bench/records_bench.py                    # all three parts
    $VENV/bin/python bench/records_bench.py --part overhead    # or load | scale; --rows 1000000 etc.
    $VENV/bin/python bench/records_bench.py --part overhead --run RUN --engine onnx --images DIR  # real

1. overhead: four ``defectlab serve`` subprocesses on one fitted run (recording off, SQLite, PostgreSQL,
   PostgreSQL with ``synchronous_commit=off``), ``--requests`` sequential POST /inspect (heatmap included)
   alternating between them so all see the same machine load; client-side p50/p95, the p50 cost of
   recording in % of "off", the paired median difference, server CPU per request, and from each server's
   access log its own p50 and ``record_wait_ms`` (how long answers waited for their commit).
2. load: a server with recording off, then per backend one with recording on, takes ``--load-requests``
   requests from 8 concurrent clients (each request a unique file name): throughput against "off",
   errors, every request in the store exactly once, integrity
   check (each request's image differs by a PNG text chunk, so each has its own file). Then a fresh
   store: the server is SIGKILLed after a third of the requests, restarted on the same store, and the
   rest are sent: every request answered 200 before the kill is in the store exactly once,
   no row half-written, integrity check passes (images present and matching their hashes).
3. scale: ``--rows`` synthetic rows (30 days, 5 lines, 3 model versions, ~5% defects, a few ``unknown``
   types) bulk-inserted; p50 over 20 runs of the review queue's first page (what GET /review/queue does:
   20 items + the queue size) and of a filtered list (verdict + type + time window + model, 50 rows).

Writes ``bench/results/records_<part>.json``. The machine is shared (2 cores, other work running): the
load average is recorded; the overhead ratio is measured side by side and is the meaningful number.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
TMP = RESULTS / "tmp"
sys.path.insert(0, str(ROOT))  # tests.records_pg: the throwaway PostgreSQL server
from serve_bench import Server as EngineServer  # noqa: E402 - bench/ is the script's folder
from serve_bench import _pct  # noqa: E402


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_avg": os.getloadavg(),
        "note": "2-core machine shared with other engineers' work; wall times are upper bounds",
    }


def prepare_run(size: int) -> Path:
    from defectlab.anomaly.runner import RunConfig, fit_detector
    from defectlab.data.synthetic import SynthConfig, make_synthetic

    run = TMP / f"records_run_{size}"
    if (run / "detector.json").is_file():
        return run
    data = make_synthetic(TMP / "records_synth", SynthConfig(kind="object", seed=3))
    fit_detector(
        RunConfig(data=str(data), image_size=size, resize="squash", options={"coreset_ratio": 0.1})
    ).save(run)
    return run


def test_images(folder: Path | None = None, limit: int = 60) -> list[tuple[str, bytes]]:
    """The synthetic run's test images, or up to ``limit`` images of ``folder`` (every k-th, all classes)."""
    if folder is None:
        folder = TMP / "records_synth" / "synthetic_object" / "test"
        return [(p.name, p.read_bytes()) for p in sorted(folder.rglob("*.png"))]
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    files = files[:: max(1, len(files) // limit)][:limit]
    return [(p.name, p.read_bytes()) for p in files]


ENGINE = ["torch"]  # --engine


def Server(run: Path, records: list[str]) -> EngineServer:  # noqa: N802 - reads as the class it builds
    """``defectlab serve RUN [--records ...]``; its log kept under bench/results/tmp."""
    log = TMP / f"records_server_{'_'.join(records).replace('/', '_')[-60:] or 'off'}.log"
    srv = EngineServer(run, ENGINE[0], records, log=log, deadline_s=900)  # a loaded machine starts slowly
    srv.log_path = log  # type: ignore[attr-defined]
    return srv


def access_log(path: Path, n: int) -> dict[str, Any]:
    """The server's own view of its last ``n`` /inspect requests (its access log): latency from the
    request's arrival to its answer, and ``record_wait_ms``, how long the answer waited for the commit."""
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.startswith('{"ts"')]
    lines = [x for x in lines if x.get("path") == "/inspect" and x.get("status") == 200][-n:]
    out = {"server_p50_ms": round(float(np.median([x["latency_ms"] for x in lines])), 2)}
    waits = [x["record_wait_ms"] for x in lines if "record_wait_ms" in x]
    if waits:
        out["record_wait_p50_ms"] = round(float(np.median(waits)), 2)
        out["record_wait_p95_ms"] = round(float(np.percentile(waits, 95)), 2)
    return out


def _store_args(backend: str, pg: str | None, tag: str, fresh: bool = True) -> tuple[list[str], str, Path]:
    """serve flags, the store target, its image folder (a fresh store unless ``fresh=False``: SQLite only)."""
    import shutil

    folder = TMP / f"records_{tag}_{backend}"
    if fresh:
        shutil.rmtree(folder, ignore_errors=True)
    if backend == "sqlite":
        return ["--records", str(folder)], str(folder), folder / "images"
    from tests.records_pg import create_database

    url = create_database(pg, f"bench_{tag}_{backend.replace('-', '_')}")  # type: ignore[arg-type]
    if backend == "postgresql-async-commit":  # the server acknowledges before its WAL reaches disk
        url += "?options=-c%20synchronous_commit%3Doff"
    return ["--records", url, "--records-images", str(folder / "images")], url, folder / "images"


def part_overhead(run: Path, backends: list[str], pg: str | None, n: int,
                  images: Path | None = None) -> dict[str, Any]:
    import httpx

    files = test_images(images)
    servers = {"off": Server(run, [])}
    variants = [*backends, *(["postgresql-async-commit"] if "postgresql" in backends else [])]
    for b in variants:
        servers[b] = Server(run, _store_args(b, pg, "overhead")[0])
    lat: dict[str, list[float]] = {k: [] for k in servers}
    try:
        with httpx.Client(timeout=120) as client:

            def one(key: str, i: int) -> float:
                name, data = files[i % len(files)]
                t0 = time.perf_counter()
                client.post(f"{servers[key].base}/inspect", files={"file": (name, data)}).raise_for_status()
                return time.perf_counter() - t0

            for i in range(min(10, n)):
                for k in servers:
                    one(k, i)
            keys = list(servers)
            cpu0 = {k: srv.cpu_s() for k, srv in servers.items()}
            for i in range(n):
                order = keys[i % len(keys) :] + keys[: i % len(keys)]  # rotate: no server always first
                for k in order:
                    lat[k].append(one(k, i))
            cpu = {k: 1000 * (srv.cpu_s() - cpu0[k]) / n for k, srv in servers.items()}
    finally:
        for s in servers.values():
            s.close()
    out = {k: {**_pct(v), "server_cpu_ms_per_request": round(cpu[k], 2),
               **access_log(servers[k].log_path, n)} for k, v in lat.items()}  # type: ignore[attr-defined]
    off = out["off"]["p50_ms"]
    for b in variants:
        out[b]["overhead_p50_pct"] = round(100 * (out[b]["p50_ms"] - off) / off, 2)
        # what the answer waited for its commit, against the request's whole time with recording off
        out[b]["record_wait_pct_of_off_p50"] = round(100 * out[b]["record_wait_p50_ms"] / off, 2)
        # CPU the server spends per request: far less sensitive to the other work on the machine
        out[b]["overhead_cpu_pct"] = round(100 * (cpu[b] - cpu["off"]) / cpu["off"], 2)
        # paired: the same request index, one after the other, so load swings cancel
        diffs = np.asarray(lat[b]) - np.asarray(lat["off"])
        out[b]["paired_median_diff_ms"] = round(1000 * float(np.median(diffs)), 2)
    return out


def unique_png(data: bytes, tag: str) -> bytes:
    """The same picture with a text chunk naming the request: every request stores its own image file."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("request", tag)
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _send_all(
    base: str, names: list[str], data: bytes, stop_after: int | None = None, on_count: Any = None
) -> dict[str, int]:
    """POST each name once from 8 clients; returns name -> status (0 = no answer)."""
    import httpx

    status: dict[str, int] = {}
    done = [0]
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=8)) as client:

        def one(name: str) -> None:
            try:
                r = client.post(f"{base}/inspect", files={"file": (name, unique_png(data, name))},
                                params={"heatmap": "false"})
                status[name] = r.status_code
            except httpx.HTTPError:
                status[name] = 0
            done[0] += 1
            if on_count is not None and stop_after is not None and done[0] == stop_after:
                on_count()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, names))
    return status


def part_load(run: Path, backends: list[str], pg: str | None, n: int) -> dict[str, Any]:
    from defectlab.records import check, open_store

    data = test_images()[0][1]
    out: dict[str, Any] = {}
    srv = Server(run, [])  # the same load with recording off: the throughput recording costs
    t0 = time.perf_counter()
    try:
        status = _send_all(srv.base, [f"off_{i:05d}.png" for i in range(n)], data)
    finally:
        srv.close()
    off_rps = n / (time.perf_counter() - t0)
    out["off"] = {"requests": n, "errors": sum(s != 200 for s in status.values()),
                  "requests_per_s": round(off_rps, 1)}
    for b in backends:
        res: dict[str, Any] = {}
        args, target, images = _store_args(b, pg, "load")
        srv = Server(run, args)
        names = [f"req_{i:05d}.png" for i in range(n)]
        t0 = time.perf_counter()
        try:
            status = _send_all(srv.base, names, data)
        finally:
            srv.close()
        wall = time.perf_counter() - t0
        store = open_store(target, images=images)
        recorded = [r["image_name"] for chunk in store.iter_rows() for r in chunk]
        res["steady"] = {
            "requests": n,
            "errors": sum(s != 200 for s in status.values()),
            "requests_per_s": round(n / wall, 1),
            # runs one after the other: on a shared machine the load's swings can outweigh this
            "throughput_cost_pct": round(100 * (1 - (n / wall) / off_rps), 1),
            "recorded": len(recorded),
            "each_exactly_once": sorted(recorded) == sorted(names),
            "check": check(store),
        }
        store.close()
        # SIGKILL mid-load, restart on the same store, send the rest
        args, target, images = _store_args(b, pg, "kill")
        srv = Server(run, args)
        first, rest = names[: n // 2], names[n // 2 :]
        status = _send_all(srv.base, first, data, stop_after=n // 3, on_count=srv.kill)
        acked = [k for k, v in status.items() if v == 200]
        srv2 = Server(run, args)  # restart: opens (and checks the schema of) the same store
        try:
            status2 = _send_all(srv2.base, rest, data)
        finally:
            srv2.close()
        store = open_store(target, images=images)
        recorded = [r["image_name"] for chunk in store.iter_rows() for r in chunk]
        counts: dict[str, int] = {}
        for r in recorded:
            counts[r] = counts.get(r, 0) + 1
        report = check(store)
        res["sigkill"] = {
            "killed_after_answers": n // 3,
            "acknowledged_before_kill": len(acked),
            "unanswered_at_kill": len(first) - len(acked),
            "acknowledged_lost": sum(counts.get(k, 0) == 0 for k in acked),
            "recorded_but_unanswered": sum(counts.get(k, 0) > 0 for k in first if status.get(k) != 200),
            "duplicates": sum(c > 1 for c in counts.values()),
            "after_restart_errors": sum(s != 200 for s in status2.values()),
            "after_restart_all_recorded": all(counts.get(k, 0) == 1 for k in rest),
            "check": report,
        }
        store.close()
        out[b] = res
        print(b, json.dumps(res)[:400], flush=True)
    return out


def synthetic_rows(n: int, seed: int = 0):  # type: ignore[no-untyped-def]
    from defectlab.records.store import priority

    rng = random.Random(seed)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    types = ["crack", "scratch", "hole", "stain", "blowhole"]
    for i in range(n):
        defect = rng.random() < 0.05
        score = rng.uniform(1.0, 3.0) if defect else max(0.0, rng.gauss(0.7, 0.12))
        dtype = ("unknown" if rng.random() < 0.04 else rng.choice(types)) if defect else None
        verdict = "defect" if score > 1.0 else "good"
        prio, queued = priority(score, 1.0, verdict, dtype)
        sha = f"{i:064x}"
        yield {
            "created_at": t0 + timedelta(seconds=i * 30 * 86400 / n),
            "source": f"line{i % 5}",
            "origin": "service",
            "image_name": f"part_{i}.png",
            "image_sha256": sha,
            "image_path": f"{sha[:2]}/{sha}.png",
            "map_path": None,
            "width": 512,
            "height": 512,
            "model_version": f"m{min(2, 3 * i // n)}",
            "score": score,
            "threshold": 1.0,
            "verdict": verdict,
            "type": dtype,
            "type_prob": 0.8 if dtype else None,
            "type_top": None,
            "boxes": [[10, 10, 50, 50]] if verdict == "defect" else [],
            "regions": None,
            "latency_ms": 40.0,
            "priority": prio,
            "review_state": "queued" if queued else "skipped",
            "version": 1,
        }


def part_scale(backends: list[str], pg: str | None, rows: int, reuse: bool = False) -> dict[str, Any]:
    from sqlalchemy import insert

    from defectlab.records import RecordFilter, open_store
    from defectlab.records.models import Inspection

    out: dict[str, Any] = {"rows": rows}
    for b in backends:
        _, target, images = _store_args(b, pg, "scale", fresh=not reuse)
        store = open_store(target, images=images)
        t0 = time.perf_counter()
        chunk: list[dict[str, Any]] = []
        reused = reuse and b == "sqlite" and store.count() == rows
        with store.engine.begin() as conn:
            if reused:  # the same seeded rows from an earlier run: skip the slow bulk insert
                rows_iter = iter(())
            else:
                rows_iter = synthetic_rows(rows)
            for row in rows_iter:
                chunk.append(row)
                if len(chunk) == 20000:
                    conn.execute(insert(Inspection), chunk)
                    chunk = []
            if chunk:
                conn.execute(insert(Inspection), chunk)
        insert_s = time.perf_counter() - t0
        if b == "postgresql":  # what autovacuum does on a live server (statistics, visibility map)
            with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE inspections")
        f = RecordFilter(
            verdict="defect",
            type="crack",
            since=datetime(2026, 1, 10, tzinfo=UTC),
            until=datetime(2026, 1, 20, tzinfo=UTC),
            model="m1",
        )
        timings: dict[str, list[float]] = {"queue_first_page": [], "filtered_list": [], "unfiltered_list": []}
        sizes = {}
        for _ in range(20):
            t = time.perf_counter()
            q = store.queue(limit=20)
            total = store.queue_size()
            timings["queue_first_page"].append(time.perf_counter() - t)
            t = time.perf_counter()
            lst = store.list(f, limit=50)
            timings["filtered_list"].append(time.perf_counter() - t)
            t = time.perf_counter()
            store.list(limit=50)
            timings["unfiltered_list"].append(time.perf_counter() - t)
            sizes = {"queue_total": total, "queue_page": len(q), "filtered_page": len(lst)}
        out[b] = {
            "insert_s": None if reused else round(insert_s, 1),
            **{k: _pct(v) for k, v in timings.items()},
            **sizes,
        }
        store.close()
        print(b, out[b], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["overhead", "load", "scale", "all"], default="all")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--requests", type=int, default=150)
    ap.add_argument("--load-requests", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--suffix", default="", help="appended to the result file's name (parallel runs)")
    ap.add_argument("--reuse", action="store_true", help="scale: reuse the SQLite store of an earlier run")
    ap.add_argument("--run", type=Path, help="overhead/load: this fitted run instead of the synthetic one")
    ap.add_argument("--engine", default="torch", choices=["torch", "onnx"])
    ap.add_argument("--images", type=Path, help="overhead: request images from this folder (with --run)")
    args = ap.parse_args()
    from tests.records_pg import postgres_server

    TMP.mkdir(parents=True, exist_ok=True)
    backends = args.backends.split(",")
    parts = ["overhead", "load", "scale"] if args.part == "all" else [args.part]
    with postgres_server() as pg:
        if pg is None and "postgresql" in backends:
            print("PostgreSQL not available: SQLite only", flush=True)
            backends = [b for b in backends if b != "postgresql"]
        ENGINE[0] = args.engine
        run = args.run or (prepare_run(args.image_size) if set(parts) & {"overhead", "load"} else None)
        for part in parts:
            machine = _machine()
            t0 = time.perf_counter()
            if part == "overhead":
                res = part_overhead(run, backends, pg, args.requests, args.images)  # type: ignore[arg-type]
            elif part == "load":
                res = part_load(run, backends, pg, args.load_requests)  # type: ignore[arg-type]
            else:
                res = part_scale(backends, pg, args.rows, args.reuse)
            doc = {
                "part": part,
                "args": vars(args),
                "machine_start": machine,
                "loadavg_start": machine["load_avg"],
                "load_avg_end": os.getloadavg(),
                "wall_s": round(time.perf_counter() - t0, 1),
                "results": res,
            }
            path = RESULTS / f"records_{part}{args.suffix}.json"
            path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
            print(f"-> {path}", flush=True)


if __name__ == "__main__":
    main()
