"""CPU results bit for bit: the working tree against a git ref (default ``main``) on the same small fits.

    $VENV/bin/python bench/devices_cpu_identity.py [--ref main]

Runs the same script under both sources (``git archive REF src``): PatchCore, PaDiM and kNN fitted with
the default ``device=auto`` (the CPU here) on a small synthetic texture set, their fitted state hashed and
their test scores listed, and a two-epoch ``classify run`` whose best checkpoint is hashed and whose loss
history is listed. Writes ``bench/results/devices_cpu_identity.json`` with ``identical: true`` when every
number and hash agrees.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r'''
import hashlib, json, sys
from pathlib import Path
import torch, yaml
from defectlab.anomaly.runner import RunConfig, evaluate, evaluation_records, fit_detector
from defectlab.classify.experiment import load_experiment, run_experiment
from defectlab.data.index import open_dataset
from defectlab.data.synthetic import SynthConfig, make_synthetic

torch.set_num_threads(1)
root = Path(sys.argv[1])
data = make_synthetic(root / "data", SynthConfig(kind="texture", size=64, n_train=10, n_test_good=4,
                                                 n_per_defect=4, seed=0))


def digest(state):
    flat = [v.detach().flatten().double() for _, v in sorted(state.items()) if v.dtype.is_floating_point]
    return hashlib.sha256(torch.cat(flat).numpy().tobytes()).hexdigest()[:16]


out = {}
for method in ("patchcore", "padim", "knn"):
    det = fit_detector(RunConfig(data=str(data), model=method, image_size=64, holdout_group="none"))
    res = evaluate(det, evaluation_records(open_dataset(data)))
    out[method] = {"state_sha256": digest(det.model.state_dict()), "threshold": det.thresholds.image,
                   "scores": [r["score"] for r in res.rows]}
exp = root / "exp.yaml"
exp.write_text(yaml.safe_dump({
    "name": "t", "data": {"dataset": str(data), "split": {"val": 0.34, "test": 0.34, "use_train_good": False}},
    "base": {"model": {"name": "simple_cnn", "options": {"width": 8, "blocks": 2}},
             "train": {"epochs": 2, "image_size": 32, "batch_size": 4, "augment": "basic"}},
    "attempts": [{"name": "a"}]}))
rows = run_experiment(load_experiment(exp), root / "cls", progress=False)
best = torch.load(root / "cls" / "a" / "best.pt", weights_only=True)
out["classify"] = {"best_sha256": digest(best["model"]),
                   "history": [[r["train_loss"], r["val_loss"]] for r in rows[0]["history"]]}
print(json.dumps(out))
'''


def probe(src: Path, work: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(work)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", default="main")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", args.ref], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        archive = subprocess.run(["git", "archive", args.ref, "src"], cwd=ROOT, capture_output=True, check=True)
        (tmp / "ref").mkdir()
        subprocess.run(["tar", "-x", "-C", str(tmp / "ref")], input=archive.stdout, check=True)
        before = probe(tmp / "ref" / "src", tmp / "a")
        after = probe(ROOT / "src", tmp / "b")
    result = {"what": "PatchCore / PaDiM / kNN fits + test scores and a 2-epoch classify run on the CPU "
                      "(device auto), this tree vs a git ref", "ref": f"{args.ref} ({commit})",
              "identical": before == after,
              "differs": sorted(k for k in before if before[k] != after.get(k)),
              "this_tree": after}
    dest = ROOT / "bench" / "results" / "devices_cpu_identity.json"
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(f"identical: {result['identical']} (differs: {result['differs']}) -> {dest}")


if __name__ == "__main__":
    main()
