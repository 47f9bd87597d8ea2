"""Soak test of ``defectlab serve``: many requests from 8 clients on a mixed set, against a real server
subprocess on 127.0.0.1, per engine; plus the peak memory of one request, typical vs largest accepted.

    nice $VENV/bin/python bench/soak.py --run RUN --minutes 4          # per engine
    nice $VENV/bin/python bench/soak.py --run RUN --requests 20000     # the issue's count, if time allows

The mix (cycled, shuffled once): real images of the run's dataset (``--images``: its test folder), every
malformed kind (empty, not an image, truncated PNG and JPEG, a pixel bomb header, a file over the decode
limit, an upload over the size limit, a 1x1 image, a 6300x6300 PNG and a 2000x2000 PNG over the model's
pixel budget) and large legitimate images up to the model's budget (PNG and JPEG, EXIF-rotated, 16-bit).
Records: status counts (5xx must be 0), p50/p95 latency of the 200s, server RSS every second (growth over
the last half of the run: mean RSS of the last tenth vs of the tenth around the middle).

``--memory``: peak RSS (VmHWM, reset through /proc/PID/clear_refs) of one request for a typical image vs
the largest accepted one, per engine, each in a fresh server; also for the same model with a fixed-size
(letterbox) input, where the largest accepted image is the decode limit (40 Mpx) reduced on load.
Writes ``bench/results/soak_<name>.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from serve_bench import Server  # bench/ is the script's folder

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"


def encode(im: Image.Image, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + tag + data + zlib.crc32(tag + data).to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096, 9)) + \
        chunk(b"IEND", b"")


def largest_side(scale: float, budget: int, aspect: float = 1.0) -> tuple[int, int]:
    """(w, h) of the largest image with this aspect whose model-side size fits the budget."""
    w = int((budget / aspect) ** 0.5 / scale)
    while round(w * scale) * round(w * aspect * scale) > budget:
        w -= 1
    return w, int(w * aspect)


Item = tuple[str, str, bytes]  # kind, file name, bytes


def mixed_set(images: list[Path], scale: float, budget: int, n_real: int = 48) -> list[Item]:
    """(kind, filename, bytes) items."""
    rng = random.Random(0)
    real = [("real", p.name, p.read_bytes()) for p in rng.sample(images, min(n_real, len(images)))]
    base = Image.open(images[0]).convert("RGB")
    good = real[0][2]
    w, h = largest_side(scale, budget)
    big = base.resize((w, h), Image.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = 6
    sixteen = Image.fromarray(np.asarray(base.convert("L").resize((w, h)), dtype=np.uint16) * 257)
    malformed = [
        ("malformed", "empty.png", b""),
        ("malformed", "notes.png", b"%PDF-1.4 not an image\n" * 50),
        ("malformed", "trunc.png", good[: len(good) // 2]),
        ("malformed", "trunc.jpg", encode(base, "JPEG")[:2000]),
        ("malformed", "bomb.png", bomb_png(50_000, 50_000)),
        ("malformed", "decode_limit.png", encode(Image.new("L", (7000, 7000)))),  # 49 Mpx > 40 Mpx
        ("malformed", "upload_limit.bin", os.urandom(21 * 2**20)),  # > 20 MiB
        ("malformed", "tiny.png", encode(Image.new("RGB", (1, 1)))),
        ("malformed", "6300.png", encode(Image.new("L", (6300, 6300)))),  # the 38 KB PNG
        ("malformed", "2000.png", encode(base.resize((2000, 2000)))),
    ]
    large = [
        ("large", "largest.png", encode(big)),
        ("large", "largest.jpg", encode(big, "JPEG", quality=92)),
        ("large", "largest_exif.jpg", encode(big.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=92,
                                             exif=exif.tobytes())),
        ("large", "largest16.png", encode(sixteen)),
    ]
    return real * 3 + malformed + large * 4  # about 73% real, 8% malformed, 10% large


def soak(run: Path, engine: str, items: list[tuple[str, str, bytes]], requests: int, seconds: float) -> dict:
    server = Server(run, engine, log=RESULTS / "tmp" / f"soak_server_{engine}.log")
    rss: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not stop.wait(1.0):
            rss.append((round(time.monotonic() - t0, 1), server.status("VmRSS")))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    counts: Counter = Counter()
    by_kind: dict[str, Counter] = {}
    lat: list[float] = []
    order = items[:]
    random.Random(1).shuffle(order)
    t_start = time.monotonic()
    deadline = t_start + seconds
    lock = threading.Lock()
    sent = 0

    def client(c: int) -> None:
        nonlocal sent
        with httpx.Client(timeout=120) as http:
            i = c
            while time.monotonic() < deadline:
                with lock:
                    if sent >= requests:
                        return
                    sent += 1
                kind, name, data = order[i % len(order)]
                i += 8
                t0 = time.perf_counter()
                try:
                    r = http.post(f"{server.base}/inspect", files={"file": (name, data)},
                                  params={"heatmap": "true" if i % 2 else "false"})
                    status = r.status_code
                except httpx.TransportError as exc:  # e.g. the 21 MiB body cut off after its 413
                    status = f"transport:{type(exc).__name__}"
                elapsed = time.perf_counter() - t0
                with lock:
                    counts[str(status)] += 1
                    by_kind.setdefault(kind, Counter())[str(status)] += 1
                    if status == 200:
                        lat.append(elapsed)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client, range(8)))
    wall = time.monotonic() - t_start
    stop.set()
    sampler.join(5)
    metrics = httpx.get(f"{server.base}/metrics").text
    shutdown_s = server.close()
    mb = [r / 2**20 for _, r in rss]
    n = len(mb)
    mid = float(np.mean(mb[int(n * 0.45): max(int(n * 0.55), int(n * 0.45) + 1)])) if n else 0.0
    end = float(np.mean(mb[int(n * 0.9):])) if n else 0.0
    a = np.asarray(lat) * 1000
    return {
        "engine": engine, "requests": sum(counts.values()), "wall_s": round(wall, 1),
        "status_counts": dict(counts), "by_kind": {k: dict(v) for k, v in by_kind.items()},
        "n_5xx": sum(v for k, v in counts.items() if k.startswith("5")),
        "latency_200_ms": {"p50": round(float(np.percentile(a, 50)), 1),
                           "p95": round(float(np.percentile(a, 95)), 1),
                           "max": round(float(a.max()), 1)} if len(a) else None,
        "rss_mb": {"start": round(mb[0], 1) if mb else None, "mid": round(mid, 1), "end": round(end, 1),
                   "max": round(max(mb), 1) if mb else None,
                   "growth_last_half_pct": round((end - mid) / mid * 100, 2) if mid else None},
        "rss_series_mb": [[t, round(r / 2**20, 1)] for t, r in rss[:: max(1, len(rss) // 120)]],
        "metrics_verdicts": [ln for ln in metrics.splitlines() if ln.startswith("defectlab_verdicts_total")],
        "shutdown_s": round(shutdown_s, 2),
    }


def request_memory(run: Path, engine: str, typical: bytes, cases: dict[str, bytes]) -> dict:
    """Peak RSS of one request: a fresh server per case, warmed with 3 typical requests, peak reset, one
    request of the case. Reported as the process peak and as the rise above the RSS before it."""
    out: dict[str, Any] = {}
    for name, data in {"typical": typical, **cases}.items():
        server = Server(run, engine, log=RESULTS / "tmp" / f"soak_server_{engine}.log")
        for _ in range(3):
            httpx.post(f"{server.base}/inspect", files={"file": ("t.png", typical)}, timeout=120)
        before = server.status("VmRSS")
        server.reset_peak()
        t0 = time.perf_counter()
        r = httpx.post(f"{server.base}/inspect", files={"file": (name, data)}, timeout=300)
        elapsed = time.perf_counter() - t0
        peak = server.status("VmHWM")
        body = r.json()
        out[name] = {"status": r.status_code, "size": [body.get("width"), body.get("height")],
                     "upload_kb": round(len(data) / 1024, 1), "latency_ms": round(elapsed * 1000, 1),
                     "rss_before_mb": round(before / 2**20, 1), "peak_mb": round(peak / 2**20, 1),
                     "rise_mb": round((peak - before) / 2**20, 1)}
        server.close()
    for name in cases:
        out[name]["peak_vs_typical"] = round(out[name]["peak_mb"] / out["typical"]["peak_mb"], 3)
    return out


def inspect_poison(run: Path, images: list[Path], n: int = 500) -> dict:
    """``defectlab inspect`` once over n images, 5 of them poison: rows, errors, exit code, peak RSS."""
    import csv
    import resource

    folder = RESULTS / "tmp" / "poison_folder"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i, p in enumerate(images[: n - 5]):
        shutil.copy(p, folder / f"{i:04d}{p.suffix}")
    base = Image.open(images[0]).convert("RGB")
    poison = {"p1_6300.png": encode(Image.new("L", (6300, 6300))), "p2_bomb.png": bomb_png(50_000, 50_000),
              "p3_trunc.jpg": encode(base, "JPEG")[:1500],
              "p4_49mpx.png": encode(Image.new("L", (7000, 7000))),
              "p5_2000.png": encode(base.resize((2000, 2000)))}
    for i, (name, data) in enumerate(poison.items()):  # spread through the folder: inside different batches
        (folder / f"{(i + 1) * 90:04d}_{name}").write_bytes(data)
    out = RESULTS / "tmp" / "poison.csv"
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "2"}
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "defectlab", "inspect", str(run), str(folder), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    wall = time.monotonic() - t0
    rows = list(csv.DictReader(out.open()))
    errors = {r["path"]: r["error"] for r in rows if r["verdict"] == "error"}
    return {"images": len(list(folder.iterdir())), "rows": len(rows), "errors": len(errors),
            "error_rows": errors,
            "exit_code": proc.returncode, "runs": 1, "wall_s": round(wall, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "stdout": proc.stdout.strip().splitlines()[-1:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "magnetic_tile" / "test")
    ap.add_argument("--engines", default="torch,onnx")
    ap.add_argument("--requests", type=int, default=20_000, help="per engine (stops earlier at --minutes)")
    ap.add_argument("--minutes", type=float, default=4.0, help="per engine")
    ap.add_argument("--memory", action="store_true", help="also measure the peak RSS of one request")
    ap.add_argument("--poison", action="store_true", help="also: inspect 500 images with 5 poison ones")
    ap.add_argument("--name", default="magnetic_tile")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from defectlab.anomaly.detector import Detector
    from defectlab.data.io import is_image_file

    (RESULTS / "tmp").mkdir(parents=True, exist_ok=True)
    det = Detector.load(args.run)
    scale, budget = det.preprocess.scale, det.model_pixel_budget
    images = sorted(p for p in args.images.rglob("*") if is_image_file(p))
    items = mixed_set(images, scale, budget)
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs shared with other work (load at start "
                   f"{os.getloadavg()[0]:.1f})", "run": args.run.name, "scale": scale,
        "max_model_pixels": budget, "largest_accepted": list(largest_side(scale, budget)),
        "mix": dict(Counter(k for k, _, _ in items)), "requests_asked": args.requests,
        "minutes_per_engine": args.minutes,
        "note": "requests per engine are those that fit in --minutes on this shared 2-core machine",
    }
    for engine in args.engines.split(","):
        result[f"soak_{engine}"] = soak(args.run, engine, items, args.requests, args.minutes * 60)
        shown = {k: v for k, v in result[f"soak_{engine}"].items() if k != "rss_series_mb"}
        print(json.dumps(shown), flush=True)
    if args.memory:
        typical = next(d for k, _, d in items if k == "real")
        largest = next(d for _, n, d in items if n == "largest.png")
        for engine in args.engines.split(","):
            cases = {"largest_accepted": largest}
            result[f"memory_{engine}"] = request_memory(args.run, engine, typical, cases)
            print(json.dumps(result[f"memory_{engine}"]), flush=True)
        fixed = RESULTS / "tmp" / "soak_run_letterbox"  # same model, fixed-size input: decode limit decides
        shutil.rmtree(fixed, ignore_errors=True)
        shutil.copytree(args.run, fixed)
        meta = json.loads((fixed / "detector.json").read_text())
        meta["preprocess"]["resize"] = "letterbox"
        (fixed / "detector.json").write_text(json.dumps(meta))
        huge = encode(Image.open(images[0]).convert("RGB").resize((6300, 6300)), "JPEG", quality=85)
        huge_png = encode(Image.new("L", (6300, 6300)))
        result["memory_torch_letterbox"] = request_memory(fixed, "torch", typical,
                                                          {"6300x6300.jpg": huge, "6300x6300.png": huge_png})
        print(json.dumps(result["memory_torch_letterbox"]), flush=True)
    if args.poison:
        result["inspect_poison"] = inspect_poison(args.run, images)
        print(json.dumps(result["inspect_poison"]), flush=True)
    out = RESULTS / f"soak_{args.name}.json"
    out.write_text(json.dumps(result, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
