"""Inspection in production, CPU: /inspect latency (p50/p95) and ``inspect`` images/s, torch vs onnxruntime.

    $VENV/bin/python bench/serve_bench.py                       # magnetic_tile if present
    $VENV/bin/python bench/serve_bench.py --dataset synthetic   # no shared data needed
    # reuse a fitted run, inspect an evenly spread subset of 120 test images, 100 requests per engine
    ... bench/serve_bench.py --run bench/results/tmp/serve_run_magnetic_tile --max-test 120 --requests 100

1. Fits the default detector (``defectlab anomaly fit`` defaults: see ``RunConfig`` and ``PatchCoreConfig``)
   on the dataset's train/good images, or reuses ``--run``; exports it to ONNX.
2. ``inspect`` (``inspect_folder``, batch 8) over the test images with each engine, alternating, best of
   two rounds without heatmaps, then one round writing heatmap PNGs: images/s after one warm-up batch
   (image decoding, preprocessing, inference, maps back to full size, boxes, CSV); checks both engines'
   scores agree (max |diff|).
3. Starts ``defectlab serve RUN --engine torch`` and ``... --engine onnx`` as subprocesses on 127.0.0.1 and
   sends ``--requests`` POST /inspect (heatmap included) to each, one at a time, alternating between the two
   so both see the same machine load (latency p50/p95/mean, client-side, after 5 warm-up requests each);
   then the same number 8 at a time to each alone (throughput, and latency under queueing).

Every process uses 2 threads (torch.set_num_threads / OMP / onnxruntime intra-op); the load average at start
and end is recorded: the machine is shared, so treat wall-clock numbers taken under load as upper bounds.
CPU time is recorded too (``cpu_ms_per_image`` of ``inspect``: the bench process, all threads;
``server_cpu_ms_per_request``: the server process over the sequential phase): it is far less sensitive to
the other processes on the machine than wall time.
Writes ``bench/results/serve_<dataset>.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
TMP = RESULTS / "tmp"
SHARED = ROOT.parent / "shared" / "data"
THREADS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2),
            "mean_ms": round(float(a.mean()), 2), "max_ms": round(float(a.max()), 2), "n": len(values)}


def prepare_run(dataset: str, run: Path | None) -> tuple[Path, Path, dict[str, Any]]:
    from defectlab.anomaly.runner import RunConfig, fit_detector
    from defectlab.data.synthetic import SynthConfig, make_synthetic
    from defectlab.export.onnx import export_onnx

    if dataset == "synthetic":
        data = make_synthetic(TMP / "serve_synth", SynthConfig(kind="object", n_train=60, n_per_defect=15, seed=3))
    else:
        data = SHARED / dataset
        if not data.is_dir():
            raise SystemExit(f"{data} not present: use --dataset synthetic")
    fit_s = None
    if run is None:
        run = TMP / f"serve_run_{dataset}"
        t0 = time.perf_counter()
        fit_detector(RunConfig(data=str(data))).save(run)
        fit_s = round(time.perf_counter() - t0, 1)
    summary = export_onnx(run)
    return run, data / "test", {"fit_seconds": fit_s, "onnx_export": summary}


def subset_folder(folder: Path, n: int) -> Path:
    """A folder of symlinks to ``n`` evenly spread test images (all defect types and good ones)."""
    from defectlab.inspect.batch import find_images

    images = find_images(folder)
    pick = [images[int(i)] for i in np.linspace(0, len(images) - 1, min(n, len(images)))]
    out = TMP / f"serve_subset_{folder.parent.name}_{n}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    for p in pick:
        link = out / p.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(p.resolve())
    return out


def bench_inspect(run: Path, folder: Path, engine: str, heatmaps: bool) -> tuple[dict[str, Any], dict[str, float]]:
    from defectlab.inspect import inspect_folder
    from defectlab.inspect.batch import find_images
    from defectlab.inspect.engine import load_engine
    from defectlab.inspect.onnx_engine import OnnxDetector

    model = OnnxDetector.load(run, threads=THREADS) if engine == "onnx" else load_engine(run, "torch")
    tag = f"{folder.name}_{os.getpid()}_{engine}{'_heat' if heatmaps else ''}"  # runs side by side don't collide
    out = TMP / f"serve_inspect_{tag}.csv"
    out.unlink(missing_ok=True)
    heat = TMP / f"serve_heat_{tag}" if heatmaps else None
    model.predict_images(find_images(folder)[:8])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    s = inspect_folder(model, folder, out, heatmaps=heat, batch_size=8, progress=False)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    scores = {r["path"]: float(r["score"]) for r in csv.DictReader(open(out)) if r["score"]}
    return {"images": s.total, "errors": s.errors, "seconds": round(dt, 2), "images_per_s": round(s.total / dt, 2),
            "cpu_ms_per_image": round(1000 * cpu / s.total, 1), "heatmaps": heatmaps, "defects": s.defects}, scores


class Server:
    """``defectlab serve RUN --engine E [EXTRA...]`` in a subprocess on a free loopback port (2 threads),
    waited for until ``/ready`` answers; the one server harness of the serving, soak and records benches."""

    def __init__(self, run: Path, engine: str = "torch", extra: Sequence[str] = (), *, log: Path | None = None,
                 deadline_s: float = 300, command: Sequence[str] | None = None, src: Path = ROOT / "src") -> None:
        """``command``: the serve command line before the run (default: ``defectlab serve`` with torch
        imported first to set its threads); ``src``: the package source to run (PYTHONPATH)."""
        import httpx

        self.port = _free_port()
        env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONPATH": str(src)}
        env.pop("DEFECTLAB_API_KEY", None)
        self.log = open(log, "w") if log else None  # noqa: SIM115 - closed in close()
        command = command or [sys.executable, "-c", "import torch, sys; torch.set_num_threads(2); "
                              "from defectlab.cli import main; sys.exit(main())", "serve"]
        self.proc = subprocess.Popen([*command, str(run), "--port", str(self.port), "--engine", engine, *extra],
                                     stdout=self.log or subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                if httpx.get(f"{self.base}/ready", timeout=60).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                tail = log.read_text()[-2000:] if log else ""
                raise SystemExit(f"server ({engine} {' '.join(extra)}) did not become ready {tail}".rstrip())
            time.sleep(0.3)

    def cpu_s(self) -> float:
        """CPU seconds (user + system, all threads) the server process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def status(self, key: str) -> int:
        """A /proc/PID/status size field (``VmRSS``, ``VmHWM``) in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)

    def close(self) -> float:
        """SIGTERM and wait; seconds the server took to shut down."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
        if self.log:
            self.log.close()
        return time.monotonic() - t0


def bench_servers(run: Path, folder: Path, n: int) -> dict[str, Any]:
    """Both servers up at once; sequential requests alternate torch/onnx so both see the same machine load;
    then each alone takes ``n`` requests 8 at a time."""
    import httpx

    from defectlab.inspect.batch import find_images

    files = [(p.name, p.read_bytes()) for p in find_images(folder)]
    servers = {e: Server(run, e) for e in ("torch", "onnx")}
    out: dict[str, Any] = {e: {} for e in servers}
    try:
        with httpx.Client(timeout=300, limits=httpx.Limits(max_connections=8)) as client:
            def one(engine: str, i: int) -> float:
                name, data = files[i % len(files)]
                t0 = time.perf_counter()
                r = client.post(f"{servers[engine].base}/inspect", files={"file": (name, data)})
                r.raise_for_status()
                return time.perf_counter() - t0

            for i in range(5):
                for e in servers:
                    one(e, i)
            seq: dict[str, list[float]] = {e: [] for e in servers}
            cpu0 = {e: srv.cpu_s() for e, srv in servers.items()}
            for i in range(n):
                for e in (("torch", "onnx") if i % 2 else ("onnx", "torch")):
                    seq[e].append(one(e, i))
            for e in servers:
                cpu_ms = round(1000 * (servers[e].cpu_s() - cpu0[e]) / n, 1)
                out[e]["sequential"] = {**_pct(seq[e]), "server_cpu_ms_per_request": cpu_ms}
                t0 = time.perf_counter()
                with ThreadPoolExecutor(8) as pool:
                    conc = list(pool.map(lambda i, e=e: one(e, i), range(n)))
                wall = time.perf_counter() - t0
                out[e]["concurrent_8"] = {**_pct(conc), "requests_per_s": round(n / wall, 2)}
                print(e, out[e], flush=True)
    finally:
        for srv in servers.values():
            srv.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="magnetic_tile", help="a folder of ../shared/data, or 'synthetic'")
    ap.add_argument("--run", type=Path, default=None, help="reuse a fitted run folder instead of fitting")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-test", type=int, default=0, help="inspect an evenly spread subset of the test images")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(THREADS)
    TMP.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"dataset": args.dataset, "loadavg_start": os.getloadavg(), "cpus": os.cpu_count(),
                              "threads": THREADS, "python": platform.python_version(), "torch": torch.__version__}
    import onnxruntime

    result["onnxruntime"] = onnxruntime.__version__
    run, folder, facts = prepare_run(args.dataset, args.run)
    result.update(facts)
    if args.max_test:
        folder = subset_folder(folder, args.max_test)
    from defectlab.inspect.batch import find_images

    result["test_images"] = len(find_images(folder))
    from defectlab.anomaly.detector import Detector

    info = Detector.load(run).info()
    result["model"] = {k: info[k] for k in ("method", "backbone", "image_size", "resize")} | {
        "memory_bank": info["model"].get("memory_bank"), "n_fit": info["training"].get("n_fit")}
    result["inspect"], scores = {}, {}
    # torch, onnx, torch, onnx (best of 2 each: the machine is shared), then once each with heatmaps
    for rnd, heat in ((0, False), (1, False), (2, True)):
        for engine in ("torch", "onnx"):
            res, sc = bench_inspect(run, folder, engine, heat)
            key = f"{engine}{'_heatmaps' if heat else ''}"
            prev = result["inspect"].get(key)
            if prev is None or res["images_per_s"] > prev["images_per_s"]:
                result["inspect"][key] = {**res, "rounds": (prev or {}).get("rounds", []) + [res["images_per_s"]]}
            else:
                prev["rounds"].append(res["images_per_s"])
            scores[engine] = sc
            print(rnd, key, res, flush=True)
    common = scores["torch"].keys() & scores["onnx"].keys()
    diff = max(abs(scores["torch"][k] - scores["onnx"][k]) for k in common)
    result["inspect"]["max_abs_score_diff_torch_onnx"] = diff
    result["serve"] = bench_servers(run, folder, args.requests)
    result["loadavg_end"] = os.getloadavg()
    out = RESULTS / f"serve_{args.dataset}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
