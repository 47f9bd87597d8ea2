"""PatchCore speed, memory and accuracy: defectlab vs anomalib 2.7, side by side, one run each.

    $VENV/bin/python bench/anomaly_bench.py --dataset magnetic_tile
    $VENV/bin/python bench/anomaly_bench.py --dataset synthetic

What it does (see bench/README.md for the details and the caveats):

1. Decodes and preprocesses every image ONCE (``PairTransform``: size, resize mode, ImageNet mean/std) into
   raw float32 files under ``bench/results/tmp/<dataset>/``; both sides read the very same tensors in the
   same batches, so JPEG decoding is in neither side's time.
2. Runs each side in its own subprocess (ours: this venv, ``--worker ours``; anomalib: its own venv,
   ``bench/anomalib_patchcore.py``), with the same thread count and malloc settings, while this process
   samples the child's RSS every 0.2 s and kills it past ``--max-rss-gb``.
3. Both workers use ``timed_run`` below: fit seconds over the training batches, inference ms/image at
   batch 1 (after one warm-up call) and batched, ``ru_maxrss``; they write scores and maps to raw files.
4. Computes every accuracy number for both sides with ``defectlab.metrics`` (same code, same maps at the
   model's input resolution) and writes ``bench/results/anomaly_<dataset>.json``, printing ours/anomalib.

This module is also imported by ``anomalib_patchcore.py`` (in the anomalib venv): everything above
``main`` uses only numpy and the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
TMP = RESULTS / "tmp"  # git-ignored
ANOMALIB_PYTHON = Path("/root/.cache/defectlab/anomalib-venv/bin/python")
SHARED = ROOT.parent / "shared" / "data"

# ------------------------------------------------------------------ raw tensor files (numpy only)


def write_array(path: Path, array: np.ndarray) -> None:
    """``path`` (raw bytes, C order) + ``path.json`` (shape, dtype); read back in slices without mmap."""
    array = np.ascontiguousarray(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    array.tofile(path)
    meta = {"shape": list(array.shape), "dtype": str(array.dtype)}
    path.with_suffix(path.suffix + ".json").write_text(json.dumps(meta))


def array_info(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    meta = json.loads(path.with_suffix(path.suffix + ".json").read_text())
    return tuple(meta["shape"]), np.dtype(meta["dtype"])


def read_rows(path: Path, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a raw array file, read with plain file I/O (no mmap: RSS stays honest)."""
    shape, dtype = array_info(path)
    stop = min(stop, shape[0])
    row = int(np.prod(shape[1:])) * dtype.itemsize
    with open(path, "rb") as f:
        f.seek(start * row)
        data = np.fromfile(f, dtype=dtype, count=(stop - start) * row // dtype.itemsize)
    return data.reshape((stop - start, *shape[1:]))


def batches(path: Path, batch_size: int) -> Iterator[np.ndarray]:
    n = array_info(path)[0][0]
    for start in range(0, n, batch_size):
        yield read_rows(path, start, start + batch_size)


def rss_mb(pid: int | str = "self") -> float:
    """Current resident set size in MB from /proc (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


# ------------------------------------------------------------------ the timing harness both workers use


def timed_run(
    cache: Path,
    out: Path,
    fit: Callable[[Iterator[np.ndarray]], Any],
    predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    *,
    batch_size: int,
    n_batch1: int,
    extra: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """Fit on ``cache/train.f32``, predict ``cache/test.f32``; timings, RSS and outputs to ``out``.

    ``predict(images) -> (scores (B,), maps (B, H, W))`` as numpy arrays; ``extra()`` (called at the end,
    after the fit) adds facts about the fitted model.
    """
    rss_ready = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    fit(batches(cache / "train.f32", batch_size))
    fit_s, fit_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    rss_after_fit = rss_mb()
    peak_after_fit = peak_rss_mb()

    test = cache / "test.f32"
    n_test = array_info(test)[0][0]
    predict(read_rows(test, 0, 1))  # warm-up, not timed
    n1 = min(n_batch1, n_test)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n1):
        predict(read_rows(test, i, i + 1))
    batch1_ms = (time.perf_counter() - t0) / n1 * 1000
    batch1_cpu_ms = (time.process_time() - c0) / n1 * 1000

    scores, maps = [], []
    t0, c0 = time.perf_counter(), time.process_time()
    for images in batches(test, batch_size):
        s, m = predict(images)
        scores.append(np.asarray(s, dtype=np.float32).reshape(-1))
        maps.append(np.asarray(m, dtype=np.float32).reshape(len(images), *images.shape[-2:]))
    batched_ms = (time.perf_counter() - t0) / n_test * 1000
    batched_cpu_ms = (time.process_time() - c0) / n_test * 1000
    write_array(out / "scores.f32", np.concatenate(scores))
    write_array(out / "maps.f32", np.concatenate(maps))
    result = {
        "fit_s": fit_s,
        "fit_cpu_s": fit_cpu_s,  # CPU seconds of all threads: less sensitive to other processes' load
        "infer_ms_per_image_batch1": batch1_ms,
        "infer_cpu_ms_per_image_batch1": batch1_cpu_ms,
        "n_images_batch1": n1,
        "infer_ms_per_image_batched": batched_ms,
        "infer_cpu_ms_per_image_batched": batched_cpu_ms,
        "batch_size": batch_size,
        "rss_mb_before_fit": rss_ready,
        "rss_mb_after_fit": rss_after_fit,
        "peak_rss_mb_fit": peak_after_fit,
        "peak_rss_mb": peak_rss_mb(),
        "n_train": array_info(cache / "train.f32")[0][0],
        "n_test": n_test,
        **extra(),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


def common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", type=Path, required=True, help="folder with train.f32 / test.f32")
    p.add_argument("--out", type=Path, required=True, help="folder for result.json, scores, maps")
    p.add_argument("--layers", nargs="+", default=["features.6", "features.13"])
    p.add_argument("--coreset-ratio", type=float, default=0.01)
    p.add_argument("--num-neighbours", type=int, default=9)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-batch1", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--weights", type=Path, required=True, help="torchvision mobilenet_v2 ImageNet state dict")


# ------------------------------------------------------------------ our worker (dev venv)


def worker_ours(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from defectlab.anomaly import build_model

    # anomalib's side: torchvision mobilenet_v2 and its fixed Gaussian sigma 4 (not our defaults)
    model = build_model("patchcore", {"backbone": "mobilenet_v2", "layers": tuple(args.layers), "sigma": 4.0,
                                      "coreset_ratio": args.coreset_ratio, "num_neighbours": args.num_neighbours,
                                      "weights": str(args.weights)})
    model.eval()

    def fit(train: Iterator[np.ndarray]) -> None:
        model.fit(torch.from_numpy(b) for b in train)

    def predict(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = model.predict(torch.from_numpy(images))
        return out.scores.numpy(), out.maps.numpy()

    timed_run(args.cache, args.out, fit, predict, batch_size=args.batch_size, n_batch1=args.n_batch1,
              extra=lambda: {"side": "defectlab", "torch": torch.__version__, "summary": _jsonable(model.summary())})


def worker_coreset_probe(args: argparse.Namespace) -> None:
    """Our coreset alone on ``--coreset-probe`` seeded random 128-d patches, fed in fit-sized pieces."""
    import torch

    torch.set_num_threads(args.threads)
    from defectlab.anomaly.coreset import StreamingCoreset
    from defectlab.anomaly.patchcore import PatchCoreConfig

    c = PatchCoreConfig()
    gen = torch.Generator().manual_seed(0)
    rss_ready = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    sampler = StreamingCoreset(args.coreset_ratio, 128, proj_dim=c.coreset_proj_dim, chunk_size=c.coreset_chunk,
                               seed=c.seed)
    piece = args.batch_size * 1600  # one batch of 320 px images at stride 8
    for start in range(0, args.coreset_probe, piece):
        sampler.add(torch.randn(min(piece, args.coreset_probe - start), 128, generator=gen))
    bank = sampler.finish()
    result = {"side": "defectlab (coreset only)", "n_patches": args.coreset_probe, "coreset_size": int(bank.shape[0]),
              "coreset_s": time.perf_counter() - t0, "coreset_cpu_s": time.process_time() - c0,
              "rss_mb_before": rss_ready, "peak_rss_mb": peak_rss_mb()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "probe.json").write_text(json.dumps(result, indent=2))


def coreset_probe(args: argparse.Namespace) -> None:
    """Both coresets at full magnetic_tile scale on random patches; bench/results/anomaly_coreset_probe.json."""
    load_start = os.getloadavg()
    env = dict(os.environ, MALLOC_ARENA_MAX=str(args.malloc_arena_max), MALLOC_TRIM_THRESHOLD_=str(128 << 20),
               OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    common = ["--coreset-ratio", str(args.coreset_ratio), "--threads", str(args.threads),
              "--batch-size", str(args.batch_size)]
    sides = {}
    for name, cmd in (
        ("defectlab", [sys.executable, str(Path(__file__).resolve()), "--worker", "coreset",
                       "--coreset-probe", str(args.coreset_probe)]),
        ("anomalib", [str(ANOMALIB_PYTHON), str(BENCH / "anomalib_patchcore.py"), "--cache", str(TMP),
                      "--weights", "unused", "--probe-steps", str(args.anomalib_probe or 10),
                      "--probe-random-patches", str(args.coreset_probe)]),
    ):
        out = TMP / f"out_coreset_probe_{name}"
        print(f"[coreset probe] running {name} ...", flush=True)
        run = run_side(cmd + common + ["--out", str(out)], env, args.max_rss_gb, TMP / f"coreset_probe_{name}.log")
        side = {"run": run}
        if (out / "probe.json").exists() and run["returncode"] == 0:
            side.update(json.loads((out / "probe.json").read_text()))
        sides[name] = side
        print(json.dumps(side), flush=True)
    result = {"command": " ".join([Path(sys.executable).name, "bench/anomaly_bench.py", *sys.argv[1:]]),
              "machine": {"cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
              "sides": sides, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    from defectlab.config import write_json

    write_json(RESULTS / "anomaly_coreset_probe.json", result)


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


# ------------------------------------------------------------------ driver (dev venv)


def prepare(dataset: str, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """Preprocess the dataset once into raw tensor files; returns (cache folder, dataset facts)."""
    from tqdm import tqdm

    from defectlab.data.dataset import DefectDataset
    from defectlab.data.index import open_dataset
    from defectlab.data.transforms import PairTransform

    if dataset == "synthetic":
        from defectlab.data.synthetic import SynthConfig, make_synthetic

        root = make_synthetic(TMP / "synthetic_src", SynthConfig(kind="object", size=128, n_train=60, n_test_good=20,
                                                                 n_per_defect=10, seed=0))
    else:
        root = Path(args.data) if args.data else SHARED / dataset
    index = open_dataset(root)
    train = index.select(split="train")
    test = index.select(split="test")
    n_available = len(train)
    n_test_available = len(test)
    train, test = _spread(train, args.max_train), _spread(test, args.max_test)
    size = (args.image_size, args.image_size)
    tag = f"{dataset}_{args.image_size}_{args.resize}_t{len(test)}_n{len(train)}"
    cache = TMP / tag
    facts = {"root": str(root), "n_train": len(train), "n_train_available": n_available, "n_test": len(test),
             "n_test_available": n_test_available,
             "test_counts": {t: sum(r.defect_type == t for r in test) for t in sorted({r.defect_type for r in test})},
             "image_size": list(size), "resize": args.resize, "train_subset": bool(args.max_train),
             "test_subset": bool(args.max_test)}
    if (cache / "done").exists():
        return cache, facts
    transform = PairTransform(size, resize=args.resize)
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob("*"):  # a half-written cache from an interrupted run
        old.unlink()
    boxes = np.array([valid_box(r.path, size, args.resize) for r in test], dtype=np.int64)
    write_array(cache / "test_boxes.i64", boxes)
    reuse = _cached_test(f"{dataset}_{args.image_size}_{args.resize}_t{len(test)}_", cache)
    for split, records in (("train", train), ("test", test)):
        if split == "test" and reuse is not None:  # same test images, size and resize: link, don't redo
            for name in ("test.f32", "test_masks.u8", "test_labels.u8"):
                for suffix in ("", ".json"):
                    os.link(reuse / (name + suffix), cache / (name + suffix))
            continue
        ds = DefectDataset(records, transform)
        images = np.empty((len(ds), 3, *size), dtype=np.float32)
        masks = np.empty((len(ds), *size), dtype=np.uint8)
        labels = np.empty(len(ds), dtype=np.uint8)
        for i in tqdm(range(len(ds)), desc=f"preprocess {split}", leave=False):
            s = ds[i]
            images[i], masks[i], labels[i] = s.image.numpy(), (s.mask[0] > 0.5).numpy(), s.label
        write_array(cache / f"{split}.f32", images)
        if split == "test":
            write_array(cache / "test_masks.u8", masks)
            write_array(cache / "test_labels.u8", labels)
        del images
    (cache / "done").write_text("ok")
    return cache, facts


def _spread(records: list[Any], n: int) -> list[Any]:
    """``n`` records evenly spread over the (sorted: grouped by defect type) list; all when n is 0."""
    if not n or len(records) <= n:
        return records
    return [records[i] for i in np.linspace(0, len(records) - 1, n).round().astype(int)]


def _cached_test(prefix: str, cache: Path) -> Path | None:
    for other in sorted(TMP.glob(prefix + "*")):
        if other != cache and (other / "done").exists():
            return other
    return None


def valid_box(path: Path, size: tuple[int, int], resize: str) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image inside the model input: letterbox padding is not image."""
    if resize != "letterbox":
        return 0, 0, size[0], size[1]
    from defectlab.anomaly.geometry import letterbox_box
    from defectlab.data.io import read_info

    info = read_info(path)
    return letterbox_box((info.height, info.width), size)


def run_side(cmd: list[str], env: dict[str, str], max_rss_gb: float, log: Path) -> dict[str, Any]:
    """Run one worker, sampling its RSS (and its children's) every 0.2 s; kill it past ``max_rss_gb``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT)
        sampled, killed = 0.0, False
        while proc.poll() is None:
            rss = rss_mb(proc.pid)
            sampled = max(sampled, rss)
            if rss > max_rss_gb * 1024:
                proc.kill()
                killed = True
                break
            time.sleep(0.2)
        rc = proc.wait()
    return {"returncode": rc, "sampled_peak_rss_mb": sampled, "killed_for_memory": killed, "log": str(log)}


def evaluate(cache: Path, out: Path) -> dict[str, float]:
    from defectlab.metrics import anomaly_metrics

    labels = read_rows(cache / "test_labels.u8", 0, 10**9)
    masks = read_rows(cache / "test_masks.u8", 0, 10**9).astype(bool)
    scores = read_rows(out / "scores.f32", 0, 10**9)
    maps = read_rows(out / "maps.f32", 0, 10**9)
    boxes = read_rows(cache / "test_boxes.i64", 0, 10**9)  # pixel metrics inside the image, not its padding
    crop_m = [m[t:t + h, x:x + w] for m, (t, x, h, w) in zip(masks, boxes, strict=True)]
    crop_a = [a[t:t + h, x:x + w] for a, (t, x, h, w) in zip(maps, boxes, strict=True)]
    return anomaly_metrics(labels, scores, crop_m, crop_a)


RATIO_KEYS = {  # key -> ours/anomalib is better when "lower" or "higher"
    "fit_s": "lower", "fit_cpu_s": "lower", "infer_ms_per_image_batch1": "lower",
    "infer_cpu_ms_per_image_batch1": "lower", "infer_ms_per_image_batched": "lower",
    "infer_cpu_ms_per_image_batched": "lower",
    "peak_rss_mb": "lower", "peak_rss_over_baseline_mb": "lower", "image_auroc": "higher", "pixel_auroc": "higher",
    "pixel_aupro": "higher",
}


def bench_dataset(dataset: str, args: argparse.Namespace) -> dict[str, Any]:
    from defectlab.backbones import find_weights

    load_start = os.getloadavg()
    cache, facts = prepare(dataset, args)
    weights, source = find_weights("mobilenet_v2", "imagenet")
    env = dict(os.environ, MALLOC_ARENA_MAX=str(args.malloc_arena_max), MALLOC_TRIM_THRESHOLD_=str(128 << 20),
               OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    shared = ["--cache", str(cache), "--layers", *args.layers, "--coreset-ratio", str(args.coreset_ratio),
              "--num-neighbours", str(args.num_neighbours), "--batch-size", str(args.batch_size),
              "--n-batch1", str(args.n_batch1), "--threads", str(args.threads), "--weights", str(weights)]
    sides: dict[str, dict[str, Any]] = {}
    ours = [sys.executable, str(Path(__file__).resolve()), "--worker", "ours"]
    plan = [] if args.skip_ours else [("defectlab", ours)]
    if not args.skip_anomalib:
        if not ANOMALIB_PYTHON.exists():
            raise SystemExit(f"anomalib venv missing: {ANOMALIB_PYTHON} (see bench/README.md to create it)")
        probe = ["--probe-steps", str(args.anomalib_probe)] if args.anomalib_probe else []
        plan.append(("anomalib_probe" if probe else "anomalib",
                     [str(ANOMALIB_PYTHON), str(BENCH / "anomalib_patchcore.py"), *probe]))
    for name, cmd in plan:
        out = TMP / f"out_{cache.name}_{name}"
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob("*"):
            stale.unlink()
        print(f"[{dataset}] running {name} ...", flush=True)
        log = out.parent / f"{cache.name}_{name}.log"
        run = run_side(cmd + shared + ["--out", str(out)], env, args.max_rss_gb, log)
        side: dict[str, Any] = {"run": run}
        if run["returncode"] == 0 and (out / "result.json").exists():
            side.update(json.loads((out / "result.json").read_text()))
            side["metrics"] = evaluate(cache, out)
        elif run["returncode"] == 0 and (out / "probe.json").exists():
            side.update(json.loads((out / "probe.json").read_text()))
        else:
            side["error"] = Path(run["log"]).read_text()[-3000:]
        sides[name] = side
        print(f"[{dataset}] {name}: " + json.dumps({k: side.get(k) for k in RATIO_KEYS if k in side}
                                                  | side.get("metrics", {})), flush=True)
    result = {
        "dataset": dataset,
        "command": " ".join([Path(sys.executable).name, "bench/anomaly_bench.py", *sys.argv[1:]]),
        "data": facts,
        "settings": {"backbone": "mobilenet_v2", "weights": f"{weights} ({source})", "layers": args.layers,
                     "coreset_ratio": args.coreset_ratio, "num_neighbours": args.num_neighbours,
                     "batch_size": args.batch_size, "threads": args.threads,
                     "env": {k: env[k] for k in ("MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")},
                     "metrics_at": "model input resolution, computed by defectlab.metrics for both sides"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "sides": sides,
        "ratios_ours_over_anomalib": ratios(sides),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    from defectlab.config import write_json

    write_json(RESULTS / f"anomaly_{dataset}{'_' + args.tag if args.tag else ''}.json", result)
    return result


def _value(side: dict[str, Any], key: str) -> float | None:
    if key == "peak_rss_over_baseline_mb":  # working memory: peak minus RSS with libraries and model loaded
        peak, base = side.get("peak_rss_mb"), side.get("rss_mb_before_fit")
        return float(peak - base) if peak is not None and base is not None else None
    v = side.get(key, side.get("metrics", {}).get(key))
    return float(v) if v is not None else None


def ratios(sides: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    if "defectlab" not in sides:
        return {}
    if "anomalib_probe" in sides and "estimated_fit_s" in sides["anomalib_probe"]:
        ours = _value(sides["defectlab"], "fit_s")
        return {"fit_s_over_anomalib_estimate": ours / sides["anomalib_probe"]["estimated_fit_s"] if ours else None}
    if "anomalib" not in sides:
        return {}
    out: dict[str, float | None] = {}
    for key in RATIO_KEYS:
        a, b = _value(sides["defectlab"], key), _value(sides["anomalib"], key)
        out[key] = a / b if a is not None and b else None
    return out


def print_summary(result: dict[str, Any]) -> None:
    r = result["ratios_ours_over_anomalib"]
    print(f"\n== {result['dataset']} ({result['data']['n_train']} train / {result['data']['n_test']} test, "
          f"{result['data']['image_size']} {result['data']['resize']}); load "
          f"{result['machine']['loadavg_start'][0]:.2f} -> {result['machine']['loadavg_end'][0]:.2f}")
    head = f"{'':32}{'defectlab':>12}{'anomalib':>12}{'ours/anomalib':>15}"
    print(head)
    for key, better in RATIO_KEYS.items():
        vals = [_value(result["sides"].get(s, {}), key) for s in ("defectlab", "anomalib")]
        cells = "".join(f"{v:12.4g}" if v is not None else f"{'-':>12}" for v in vals)
        ratio = r.get(key)
        print(f"{key:32}{cells}{(f'{ratio:15.3f}' if ratio is not None else f'{chr(45):>15}')}  ({better} is better)")
    probe = result["sides"].get("anomalib_probe")
    if probe and "estimated_fit_s" in probe:
        print(f"anomalib fit, estimated: {probe['estimated_fit_s']:.0f} s ({probe['n_patches']} patches, coreset "
              f"{probe['coreset_size']}, {probe['greedy_s_per_step']:.3f} s/greedy step); ours/anomalib "
              f"{r.get('fit_s_over_anomalib_estimate') or float('nan'):.4f}")


def markdown(path: Path) -> str:
    """A Markdown table of one result file (for docs/benchmarks.md)."""
    r = json.loads(Path(path).read_text())
    sides = [s for s in ("defectlab", "anomalib") if s in r["sides"]]
    d = r["data"]
    lines = [f"`{r['command']}` ({r['date_utc']}; {d['n_train']} of {d.get('n_train_available', d['n_train'])} "
             f"train images, {d['n_test']} test, {d['image_size'][0]} px {d['resize']}; load average "
             f"{r['machine']['loadavg_start'][0]:.1f} at start, {r['machine']['loadavg_end'][0]:.1f} at end)", "",
             "| | " + " | ".join(sides) + (" | ours/anomalib |" if len(sides) == 2 else " |"),
             "|---|" + "---:|" * (len(sides) + (len(sides) == 2))]
    for key in RATIO_KEYS:
        vals = [_value(r["sides"][s], key) for s in sides]
        if all(v is None for v in vals):
            continue
        cells = [f"{v:.4g}" if v is not None else "-" for v in vals]
        ratio = ratios(r["sides"]).get(key)
        lines.append(f"| {key} | " + " | ".join(cells) + (f" | {ratio:.3f} |" if ratio is not None else
                                                           (" | - |" if len(sides) == 2 else " |")))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", choices=["ours", "coreset"], help=argparse.SUPPRESS)
    p.add_argument("--coreset-probe", type=int, default=0, metavar="N",
                   help="only time both coresets on N random 128-d patches (714 x 1600 = 1142400 is magnetic_tile)")
    p.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--dataset", nargs="+", default=["magnetic_tile", "synthetic"],
                   help="magnetic_tile (from ../shared/data) and/or synthetic")
    p.add_argument("--data", help="dataset folder (default ../shared/data/<dataset>)")
    p.add_argument("--image-size", type=int, default=None, help="default: the runner's (RunConfig)")
    p.add_argument("--resize", default="letterbox", choices=["squash", "letterbox", "crop"],
                   help="one input size for both sides (anomalib's Patchcore takes no other)")
    p.add_argument("--max-train", type=int, default=0,
                   help="use this many training images (evenly spread) on both sides; 0 = all")
    p.add_argument("--max-test", type=int, default=0,
                   help="use this many test images (evenly spread, so every defect type) on both sides; 0 = all")
    p.add_argument("--layers", nargs="+", default=["features.6", "features.13"])
    p.add_argument("--coreset-ratio", type=float, default=None, help="default: PatchCoreConfig's")
    p.add_argument("--num-neighbours", type=int, default=None, help="default: PatchCoreConfig's")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-batch1", type=int, default=50, help="images timed at batch size 1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--malloc-arena-max", type=int, default=2)
    p.add_argument("--max-rss-gb", type=float, default=12.0, help="kill a side whose RSS passes this")
    p.add_argument("--skip-anomalib", action="store_true")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--anomalib-probe", type=int, default=0, metavar="STEPS",
                   help="instead of running anomalib's fit, estimate it (all features + STEPS timed greedy steps)")
    p.add_argument("--tag", default="", help="results go to bench/results/anomaly_<dataset>[_<tag>].json")
    p.add_argument("--markdown", type=Path, nargs="+", help="print result files as Markdown tables and exit")
    args = p.parse_args(argv)
    if args.markdown:
        print("\n\n".join(markdown(f) for f in args.markdown))
        return
    if args.worker == "ours":
        worker_ours(args)
        return
    if args.worker == "coreset":
        worker_coreset_probe(args)
        return
    from defectlab.anomaly.patchcore import PatchCoreConfig
    from defectlab.anomaly.runner import RunConfig

    run_defaults, pc_defaults = RunConfig(), PatchCoreConfig()
    if args.image_size is None:
        size = run_defaults.image_size
        args.image_size = size if isinstance(size, int) else size[0]
    args.coreset_ratio = args.coreset_ratio if args.coreset_ratio is not None else pc_defaults.coreset_ratio
    args.num_neighbours = args.num_neighbours if args.num_neighbours is not None else pc_defaults.num_neighbours
    if args.coreset_probe:
        coreset_probe(args)
        return
    for dataset in args.dataset:
        print_summary(bench_dataset(dataset, args))


if __name__ == "__main__":
    main()
