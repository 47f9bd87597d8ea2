"""Why ``anomaly fit`` grew with the number of images: oneDNN's per-shape primitive cache ("native" resize).

    python bench/anomaly_memory.py            # -> bench/results/anomaly_memory.json

Runs the default backbone (efficientnet_lite0, stride-8/16 blocks, patch embedding) on 200 random inputs of
random sizes (80-256 px per side, as "native" resize gives on magnetic_tile) and on 100 inputs of one size,
each in a fresh process per ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` value, and records the growth of the peak RSS
after the first forward pass and the CPU time. One thread; CPU seconds, so a loaded machine matters less.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = r"""
import os, random, resource, sys, time
import torch
torch.set_num_threads(1)
from defectlab.anomaly.features import BackboneFeatures, patch_embedding
fe = BackboneFeatures("efficientnet_lite0", None, weights="imagenet")
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
random.seed(0)
vary = sys.argv[1] == "vary"
n = 200 if vary else 100
patch_embedding(fe(torch.randn(1, 3, 200, 200)), neighbourhood=3)
r0, t0, at = rss(), time.process_time(), {}
for i in range(n):
    h, w = (random.randint(80, 256), random.randint(80, 256)) if vary else (200, 200)
    patch_embedding(fe(torch.randn(1, 3, h, w)), neighbourhood=3)
    if i + 1 in (50, 100, 200):
        at[i + 1] = round(rss() - r0, 1)
print(json.dumps({"rss_growth_mb": at, "cpu_s": round(time.process_time() - t0, 2), "start_mb": round(r0)}))
"""


def main() -> None:
    runs = []
    for cap in ("1024", "128", "0"):
        for mode in ("vary", "fixed"):
            env = dict(os.environ, ONEDNN_PRIMITIVE_CACHE_CAPACITY=cap, OMP_NUM_THREADS="1")
            out = subprocess.run([sys.executable, "-c", "import json\n" + CHILD, mode], env=env, check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            sizes = "random 80-256 px" if mode == "vary" else "one, 200x200"
            run = {"capacity": int(cap), "input_sizes": sizes, **json.loads(out)}
            print(run, flush=True)
            runs.append(run)
    (HERE / "results" / "anomaly_memory.json").write_text(json.dumps(
        {"command": "python bench/anomaly_memory.py", "machine": "2-core machine shared with other work "
         "(CPU seconds of one thread; growth in MB of peak RSS after the first forward pass)",
         "default": "ONEDNN_PRIMITIVE_CACHE_CAPACITY=128 (defectlab.anomaly.features, unless the user sets it)",
         "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
