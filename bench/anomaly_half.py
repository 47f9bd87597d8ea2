"""Half-precision inference (``anomaly test --half``) against float32 on this machine's device.

    defectlab anomaly fit ../shared/data/magnetic_tile --out RUN --no-test      # the default detector
    nice $VENV/bin/python bench/anomaly_half.py --run RUN [--every 3] [--device auto]

Scores every ``every``-th test image of the run's dataset with the same detector twice, float32 and under
``inference_autocast(half=True)`` (bfloat16 on the CPU, float16 on a GPU), side by side in one process,
and writes ``bench/results/anomaly_half.json``: the largest and median score difference (absolute and
relative to the float32 score), image AUROC both ways, the share of verdicts (deployable threshold) that
change, and milliseconds per image.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from defectlab.anomaly.detector import Detector
from defectlab.anomaly.runner import evaluate, evaluation_records, place
from defectlab.data.index import open_dataset
from defectlab.devices import device_name, half_dtype

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=None, help="default: the dataset the run was fitted on")
    ap.add_argument("--every", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    det = Detector.load(args.run)
    dev = place(det, args.device)
    records = evaluation_records(open_dataset(args.data or det.training["data"]))[::args.every]
    full = evaluate(det, records, batch_size=args.batch_size)
    half = evaluate(det, records, batch_size=args.batch_size, half=True)
    a = np.array([r["score"] for r in full.rows])
    b = np.array([r["score"] for r in half.rows])
    diff = np.abs(b - a)
    rel = diff / np.maximum(np.abs(a), 1e-12)
    verdict_a, verdict_b = a > det.thresholds.image, b > det.thresholds.image
    result = {
        "what": "anomaly test: float32 vs half-precision inference (inference_autocast), same detector, "
                "same images, side by side in one process",
        "machine": "2-core machine shared with other work (timings indicative only)" if dev.type == "cpu"
                   else device_name(dev),
        "device": str(dev), "half_dtype": str(half_dtype(dev)), "run": str(args.run),
        "detector": det.info()["model"], "n_images": len(records), "every": args.every,
        "score_abs_diff": {"max": float(diff.max()), "median": float(np.median(diff))},
        "score_rel_diff": {"max": float(rel.max()), "median": float(np.median(rel))},
        "image_auroc": {"float32": full.metrics["all"].get("image_auroc"),
                        "half": half.metrics["all"].get("image_auroc")},
        "verdicts_changed": int((verdict_a != verdict_b).sum()),
        "ms_per_image": {"float32": round(full.ms_per_image, 1), "half": round(half.ms_per_image, 1)},
    }
    out = ROOT / "bench" / "results" / "anomaly_half.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
