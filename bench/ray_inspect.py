"""``inspect`` on Ray vs the local executor, side by side on this machine: throughput and identical rows.

    $VENV/bin/python bench/ray_inspect.py                 # magnetic_tile subset if present, else synthetic
    $VENV/bin/python bench/ray_inspect.py --dataset synthetic --images 96

1. A default PatchCore run (``defectlab anomaly fit`` defaults) fitted on ``--train`` good images of the
   dataset (a subset: the point is inference cost, not accuracy), or reused with ``--run``.
2. ``inspect`` of ``--images`` test images with ``--executor local`` and ``--executor ray`` (a local Ray
   started by the run with this machine's cores; one actor per core, each loads the model once),
   alternating for ``--rounds`` rounds, each into a fresh CSV. Per run: wall seconds (for Ray including
   starting Ray and the actors), and steady-state throughput: images/s from the first written unit to the
   last (start-up excluded). The ratio ray/local of the steady-state throughput is the executor's overhead
   on this machine; the CSVs must be identical row for row.
3. The per-image CPU cost (local executor: core-seconds per image) and, from it, the cores a cluster needs
   for 10 million images a day.
Writes ``bench/results/ray_inspect.json``. The machine is a shared 2-core one: load averages are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
SHARED = BENCH.parent.parent / "shared" / "data"


def subset(dataset: str, tmp: Path, n_train: int, n_images: int) -> tuple[Path, Path]:
    """An MVTec-layout folder of symlinks: ``n_train`` train/good images, ``n_images`` test images
    spread evenly over the test set."""
    if dataset == "synthetic" or not (SHARED / "magnetic_tile").is_dir():
        from defectlab.data.synthetic import SynthConfig, make_synthetic

        per = max(1, n_images // 5)
        root = make_synthetic(tmp, SynthConfig(kind="object", size=256, n_train=n_train, n_test_good=per,
                                               n_per_defect=per, seed=0))
        return root, root / "test"
    src = SHARED / "magnetic_tile"
    root = tmp / "magnetic_tile_subset"
    train = sorted((src / "train" / "good").iterdir())
    test = sorted(p for p in (src / "test").rglob("*") if p.is_file())
    step = max(1, len(train) // n_train)
    picks = [("train", p) for p in train[::step][:n_train]]
    step = max(1, len(test) // n_images)
    picks += [("test", p) for p in test[::step][:n_images]]
    for split, p in picks:
        rel = p.relative_to(src / split)
        dest = root / split / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(p)
    return root, root / "test"


def timed_inspect(run: Path, folder: Path, csv: Path, executor: str, batch: int) -> dict[str, Any]:
    from defectlab.inspect.batch import inspect_folder

    stamps: list[float] = []
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    summary = inspect_folder(run, folder, csv, batch_size=batch, executor=executor, progress=False,
                             on_row=lambda _row: stamps.append(time.perf_counter()))
    wall = time.perf_counter() - t0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    first_unit = stamps[batch - 1] if len(stamps) > batch else stamps[0]
    steady_rows = len(stamps) - batch
    steady = steady_rows / (stamps[-1] - first_unit) if steady_rows > 0 and stamps[-1] > first_unit else None
    cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    return {"executor": executor, "wall_s": round(wall, 2), "images": summary.inspected + summary.errors,
            "images_per_s_wall": round((summary.inspected + summary.errors) / wall, 3),
            "images_per_s_steady": round(steady, 3) if steady else None,
            "driver_cpu_s": round(cpu, 2), "errors": summary.errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="magnetic_tile", choices=["magnetic_tile", "synthetic"])
    ap.add_argument("--train", type=int, default=40)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--run", type=Path, default=None, help="reuse this fitted run")
    ap.add_argument("--out", type=Path, default=RESULTS / "ray_inspect.json")
    args = ap.parse_args()
    load0 = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="ray_inspect_"))
    try:
        root, folder = subset(args.dataset, tmp, args.train, args.images)
        run, fit_s = args.run, None
        if run is None:
            from defectlab.anomaly.runner import RunConfig, fit_detector

            t0 = time.perf_counter()
            run = tmp / "run"
            fit_detector(RunConfig(data=str(root))).save(run)
            fit_s = round(time.perf_counter() - t0, 1)
        rounds, csvs = [], {}
        for r in range(args.rounds):
            for executor in ("local", "ray"):
                csv = tmp / f"{executor}_{r}.csv"
                res = timed_inspect(run, folder, csv, executor, args.batch)
                res["round"] = r
                rounds.append(res)
                csvs.setdefault(executor, csv.read_text())
                print(json.dumps(res), flush=True)
        identical = csvs["local"] == csvs["ray"]
        diff = [(a, b) for a, b in zip(csvs["local"].splitlines(), csvs["ray"].splitlines(), strict=False)
                if a != b]

        def med(executor: str, key: str) -> float | None:
            vals = [x[key] for x in rounds if x["executor"] == executor and x[key] is not None]
            return statistics.median(vals) if vals else None

        local_steady, ray_steady = med("local", "images_per_s_steady"), med("ray", "images_per_s_steady")
        local_cores = min(2, os.cpu_count() or 1)
        s_per_image_core = local_cores / local_steady if local_steady else None  # upper bound
        needed_rate = 10_000_000 / 86_400
        doc = {
            "what": "defectlab inspect: Ray executor (local 2-CPU Ray, actor pool) vs local executor",
            "settings": {k: str(v) for k, v in vars(args).items() if k != "out"},
            "dataset": args.dataset if (SHARED / "magnetic_tile").is_dir() else "synthetic",
            "fit_s": fit_s, "rounds": rounds, "identical_csv": identical,
            "csv_lines": [len(csvs["local"].splitlines()), len(csvs["ray"].splitlines())],
            "differing_rows": len(diff), "first_differences": diff[:3],
            "local_images_per_s_steady": local_steady, "ray_images_per_s_steady": ray_steady,
            "ratio_ray_over_local_steady": round(ray_steady / local_steady, 3) if local_steady and ray_steady
            else None,
            "ratio_ray_over_local_wall": round(med("ray", "images_per_s_wall")
                                               / med("local", "images_per_s_wall"), 3),
            "ray_startup_s_median": round(med("ray", "wall_s") - med("ray", "images") / ray_steady, 1)
            if ray_steady else None,
            "cluster_10m_per_day": None if s_per_image_core is None else {
                "images_per_s_needed": round(needed_rate, 1),
                "core_s_per_image": round(s_per_image_core, 3),
                "cores_at_100pct": round(needed_rate * s_per_image_core, 1),
            },
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with "
                       "other work",
            "load_avg_start": [round(x, 2) for x in load0],
            "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps({k: doc[k] for k in ("identical_csv", "ratio_ray_over_local_steady",
                                              "ratio_ray_over_local_wall", "cluster_10m_per_day")}))
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
