"""Serving memory and latency: the torch engine, the ONNX engine as it was (under the full CLI, torch
loaded), and the torch-free runtime (``defectlab-runtime serve``), side by side on one fitted run.

    $VENV/bin/python bench/runtime_rss.py --run RUN                  # RUN fitted and exported (export onnx)
    $VENV/bin/python bench/runtime_rss.py --run RUN --requests 60 --baseline d70256c

Servers (each ``serve RUN`` on a free loopback port, 2 threads, ``bench/serve_bench.Server``):

* ``torch``: ``defectlab serve RUN --engine torch`` (this checkout);
* ``onnx_before``: ``defectlab serve RUN --engine onnx`` of the source at ``--baseline`` (a git ref of this
  repository, extracted with ``git archive``): the ONNX engine before the runtime, torch imported by the CLI;
* ``onnx_cli``: ``defectlab serve RUN --engine onnx`` of this checkout (no torch imported either);
* ``runtime``: ``python -m defectlab.runtime serve RUN`` (= ``defectlab-runtime serve``) of this checkout.

All four are up at once; after 5 warm-up requests each, ``--requests`` POST /inspect (heatmap included) are
sent one at a time, to every server in turn in a random order each round (so every one sees the same machine
load, and none always follows the same one: a server's idle threads may still spin after its request).
The images: an evenly spread subset of the run's test images plus one synthetic image at the largest size
the model accepts (its model pixel budget), sent 3 times to each server after the test images. Recorded per
server: peak RSS (``VmHWM``: start-up, model load and every request) after the test images and again after
the largest image, RSS after each phase, client-side latency p50/p95 over the test images (and p50 of the
largest), server CPU ms per request, and whether libtorch is mapped into the process.
Writes ``bench/results/runtime_rss.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import RESULTS, ROOT, TMP, Server, _pct  # noqa: E402

SERVERS = ("torch", "onnx_before", "onnx_cli", "runtime")


def baseline_src(ref: str) -> tuple[Path, str]:
    """The package source at git ``ref``, extracted under bench/results/tmp (once per commit)."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", ref], check=True, capture_output=True,
                            text=True).stdout.strip()
    dest = TMP / f"src_{commit[:12]}"
    if not (dest / "src" / "defectlab").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src", commit


def test_images(run: Path, n: int) -> list[tuple[str, bytes]]:
    """``n`` test images of the run's dataset (evenly spread, sorted by path) and one synthetic image at the
    largest size the model accepts."""
    meta = json.loads((run / "detector.json").read_text())
    data = Path(meta["training"]["data"])
    if not data.is_dir():
        data = ROOT.parent / "shared" / "data" / data.name
    kinds = (".png", ".jpg", ".jpeg", ".bmp")
    paths = sorted(p for p in (data / "test").rglob("*") if p.suffix.lower() in kinds)
    pick = [paths[i] for i in np.linspace(0, len(paths) - 1, min(n, len(paths))).round().astype(int)]
    files = [(p.name, p.read_bytes()) for p in pick]
    pre = meta["preprocess"]
    h, w = pre["image_size"]
    budget = 4 * h * w  # the default model pixel budget (Detector.MODEL_PIXELS_FACTOR)
    scale = float(pre.get("scale", 1.0)) if pre["resize"] == "native" else 1.0
    side = int(math.sqrt(budget) / scale) - 2  # square file whose model input just fits
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(90, 170, (side, side, 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    return files + [(f"largest_{side}x{side}.png", buf.getvalue())]


def torch_mapped(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a fitted run folder with an ONNX export")
    ap.add_argument("--requests", type=int, default=60, help="sequential requests per server")
    ap.add_argument("--images", type=int, default=40, help="test images to rotate through (+1 largest)")
    ap.add_argument("--baseline", default="d70256c", help="git ref of the ONNX engine before the runtime")
    args = ap.parse_args()
    import httpx

    files = test_images(args.run, args.images)
    before, commit = baseline_src(args.baseline)
    py = sys.executable
    commands = {"torch": None, "onnx_before": None, "onnx_cli": [py, "-m", "defectlab", "serve"],
                "runtime": [py, "-m", "defectlab.runtime", "serve"]}
    engines = {"torch": "torch", "onnx_before": "onnx", "onnx_cli": "onnx", "runtime": "onnx"}
    result: dict[str, Any] = {
        "run": str(args.run), "baseline_commit": commit, "requests": args.requests, "images": len(files),
        "largest_image": files[-1][0], "loadavg_start": os.getloadavg(), "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": "2-core VM shared with other work (timings: upper bounds; ratios measured side by side)",
        "servers": {}}
    servers: dict[str, Server] = {}
    try:
        for name in SERVERS:
            t0 = time.monotonic()
            new = name != "onnx_before"
            servers[name] = Server(args.run, engines[name], ("--device", "cpu") if new else (),
                                   command=commands[name], src=ROOT / "src" if new else before)
            result["servers"][name] = {"ready_s": round(time.monotonic() - t0, 2),
                                       "rss_ready_mb": round(servers[name].status("VmRSS") / 2**20, 1)}
            print(name, result["servers"][name], flush=True)
        lat: dict[str, list[float]] = {n: [] for n in SERVERS}
        scores: dict[str, dict[str, float]] = {n: {} for n in SERVERS}
        with httpx.Client(timeout=300) as client:
            def one(name: str, i: int) -> float:
                fname, data = files[i % len(files)]
                t0 = time.perf_counter()
                r = client.post(f"{servers[name].base}/inspect", files={"file": (fname, data)})
                r.raise_for_status()
                scores[name][fname] = r.json()["score"]
                return time.perf_counter() - t0

            for i in range(5):
                for name in SERVERS:
                    one(name, i)
            cpu0 = {n: s.cpu_s() for n, s in servers.items()}
            n_req = max(args.requests, len(files) - 1)
            rng = np.random.default_rng(0)
            for i in range(n_req):  # the test images; the servers in a fresh random order every round, so
                for name in rng.permutation(SERVERS):  # none always follows the same one (idle thread spin)
                    lat[name].append(one(name, i % (len(files) - 1)))
            for name, srv in servers.items():
                result["servers"][name].update(
                    {**_pct(lat[name]),
                     "server_cpu_ms_per_request": round(1000 * (srv.cpu_s() - cpu0[name]) / n_req, 1),
                     "peak_rss_mb": round(srv.status("VmHWM") / 2**20, 1),
                     "rss_after_test_images_mb": round(srv.status("VmRSS") / 2**20, 1)})
            big: dict[str, list[float]] = {n: [] for n in SERVERS}
            for _ in range(3):  # then the largest accepted image
                for name in SERVERS:
                    big[name].append(one(name, len(files) - 1))
        for name, srv in servers.items():
            result["servers"][name].update(
                {"largest_p50_ms": _pct(big[name])["p50_ms"],
                 "peak_rss_with_largest_mb": round(srv.status("VmHWM") / 2**20, 1),
                 "rss_end_mb": round(srv.status("VmRSS") / 2**20, 1),
                 "torch_loaded": torch_mapped(srv.proc.pid)})
            print(name, result["servers"][name], flush=True)
        ref = scores["onnx_before"]
        result["max_abs_score_diff_vs_onnx_before"] = {
            n: max(abs(scores[n][k] - ref[k]) for k in ref) for n in SERVERS}
    finally:
        for srv in servers.values():
            srv.close()
    result["requests"] = n_req
    result["loadavg_end"] = os.getloadavg()
    out = RESULTS / "runtime_rss.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
