"""The default good-only detector, measured exactly as a user runs it: ``defectlab anomaly fit DATA --out RUN``.

    python bench/anomaly_default.py                      # magnetic_tile (split by tile) -> anomaly_tile_split.json
    python bench/anomaly_default.py --data DIR --name X  # another MVTec-layout category -> anomaly_X.json

Runs the CLI in a subprocess under ``/usr/bin/time -v`` (peak RSS of the whole fit + evaluation), then reads
the run's own ``metrics.json`` and ``detector.json``: image / pixel AUROC, AUPRO, the false-alarm rate and
recall at the deployable threshold, per defect type, and how the threshold was set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("image_auroc", "pixel_auroc", "pixel_aupro", "deployable_false_alarm_rate", "deployable_recall",
        "background_auroc", "n_images")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "magnetic_tile"))
    ap.add_argument("--name", default="tile_split")
    ap.add_argument("--run", help="run folder to write (default: a temporary one)")
    ap.add_argument("extra", nargs="*", help="extra options for 'anomaly fit', after --")
    args = ap.parse_args()
    run = Path(args.run or tempfile.mkdtemp(prefix="anomaly_default_")) / "run"
    cmd = [sys.executable, "-m", "defectlab", "anomaly", "fit", args.data, "--out", str(run), *args.extra]
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        return proc.returncode
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    metrics = json.loads((run / "metrics.json").read_text())
    det = json.loads((run / "detector.json").read_text())
    per_type = {t: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items() if k in KEYS}
                for t, m in metrics["metrics"].items()}
    out = {
        "command": f"defectlab anomaly fit {Path(args.data).name} --out RUN {' '.join(args.extra)}".strip(),
        "data": args.data,
        "metrics": per_type,
        "thresholds": det["thresholds"],
        "training": {k: det["training"].get(k) for k in ("n_fit", "n_threshold", "n_threshold_groups", "holdout",
                                                          "fit_seconds", "weights")},
        "model": {"method": det["method"], "backbone": det["config"].get("backbone"),
                  "resize": det["preprocess"]["resize"], "scale": det["preprocess"].get("scale")},
        "peak_rss_gb": round(rss_kb / 2**20, 3),
        "wall_seconds": round(wall, 1),
        "ms_per_image": round(metrics["timing"]["ms_per_image"], 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_start": list(load_start),
                    "loadavg_end": list(os.getloadavg())},
    }
    dest = ROOT / "bench" / "results" / f"anomaly_{args.name}.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["metrics"].get("all"), indent=1), f"peak RSS {out['peak_rss_gb']} GB", f"-> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
