"""Data-parallel ``classify run`` (DDP, 2 CPU processes, gloo) against one process: same accuracy?

    nice $VENV/bin/python bench/classify_ddp.py [--dataset synthetic|magnetic_tile] [--epochs 15] [--seeds 0 1 2]

* ``synthetic``: the synthetic objects (good + four defect types, 40 images each, 64 px; a task a small
  CNN learns), split by image;
* ``magnetic_tile``: its five defect types, one split grouped by physical tile (no tile on two sides),
  64 px crops around the defect region (``train.input: region``; hard for a small CNN from scratch).

A small CNN, one attempt per training seed. The same experiment runs once in one process and once under
``torchrun --standalone --nproc-per-node 2`` (one torch thread per process); both use the global batch
``batch_size`` and the same steps per epoch. Seeds give the noise: the question is whether the two-process
mean lies within the seeds' spread of the one-process mean. Writes the dataset's entry of
``bench/results/classify_ddp.json``; runs land in ``bench/results/tmp/classify_ddp`` (deleted first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DATA = ROOT.parent / "shared" / "data"
KEYS = ("test_acc", "balanced_acc", "macro_f1", "best_val_acc", "best_epoch", "train_seconds")


def experiment(path: Path, dataset: str, epochs: int, seeds: list[int]) -> None:
    train = {"epochs": epochs, "image_size": 64, "batch_size": 32, "lr": 0.003, "augment": "basic",
             "monitor": "val_acc"}
    if dataset == "magnetic_tile":
        data = {"dataset": str(DATA / "magnetic_tile"),
                "split": {"val": 0.2, "test": 0.3, "use_train_good": False, "seed": 0,
                          "groups": f"csv:{DATA / 'magnetic_tile_tiles.csv'}"},
                "classes": ["blowhole", "break", "crack", "fray", "uneven"]}
        train["input"] = "region"
    else:
        from defectlab.data.synthetic import SynthConfig, make_synthetic

        root = make_synthetic(path.parent / "data", SynthConfig(kind="object", size=64, n_train=2, n_test_good=40,
                                                                n_per_defect=40, seed=0))
        data = {"dataset": str(root), "split": {"val": 0.2, "test": 0.3, "use_train_good": False, "seed": 0}}
    path.write_text(yaml.safe_dump({
        "name": "classify_ddp", "data": data,
        "base": {"model": {"name": "simple_cnn", "options": {"width": 16, "blocks": 3}}, "train": train},
        "attempts": [{"name": f"seed{s}", "train": {"seed": s}} for s in seeds]}))


def run(cmd: list[str], threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def summary(out: Path) -> dict:
    rows = json.loads((out / "comparison.json").read_text())
    per = {r["attempt"]: {k: r.get(k) for k in KEYS} for r in rows}
    agg = {}
    for k in ("test_acc", "balanced_acc", "macro_f1"):
        vals = [r[k] for r in rows]
        agg[k] = {"mean": round(statistics.mean(vals), 4),
                  "std": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0}
    return {"attempts": per, "mean": agg}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=("synthetic", "magnetic_tile"), default="synthetic")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    if args.dataset == "magnetic_tile" and not (DATA / "magnetic_tile").is_dir():
        sys.exit(f"{DATA / 'magnetic_tile'} not present")
    tmp = BENCH / "results" / "tmp" / "classify_ddp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    exp = tmp / "experiment.yaml"
    experiment(exp, args.dataset, args.epochs, args.seeds)
    verb = ["-m", "defectlab", "classify", "run", str(exp), "--no-progress", "--device", "cpu"]
    wall = {"one_process": run([sys.executable, *verb, "--out", str(tmp / "one")], threads=1),
            "two_processes": run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  "--nproc-per-node", "2", *verb, "--out", str(tmp / "two")], threads=1)}
    one, two = summary(tmp / "one"), summary(tmp / "two")
    diff = {k: round(two["mean"][k]["mean"] - one["mean"][k]["mean"], 4) for k in one["mean"]}
    noise = {k: round(max(one["mean"][k]["std"], two["mean"][k]["std"]), 4) for k in one["mean"]}
    data = ("synthetic objects, good + 4 defect types x 40 images, 64 px, split by image" if args.dataset ==
            "synthetic" else "magnetic_tile 5 defect types, one split grouped by physical tile, 64 px region crops")
    result = {
        "what": "classify run: 1 process vs torchrun 2 CPU processes (DDP, gloo), 1 torch thread per process; "
                f"{data}; simple_cnn, {args.epochs} epochs, global batch 32; one attempt per training seed",
        "machine": "2-core machine shared with other work (timings indicative only)",
        "seeds": args.seeds, "one_process": one, "two_processes": two,
        "two_minus_one": diff, "seed_std": noise,
        "within_noise": {k: abs(diff[k]) <= 2 * max(noise[k], 0.01) for k in diff},
        "wall_seconds": {k: round(v, 1) for k, v in wall.items()},
    }
    out = BENCH / "results" / "classify_ddp.json"
    everything = json.loads(out.read_text()) if out.is_file() else {}
    everything = everything if "synthetic" in everything or "magnetic_tile" in everything else {}
    everything[args.dataset] = result
    out.write_text(json.dumps(everything, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
