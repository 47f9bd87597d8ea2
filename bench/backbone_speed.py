"""Backbone forward time, NCHW vs channels-last (NHWC), for the anomaly feature extractors on this CPU.

    python bench/backbone_speed.py        # -> bench/results/backbone_speed.json

``BackboneFeatures`` (defectlab.anomaly.features) runs channels-last; this measures why: the same
extractor, same weights and input (256 x 256, ImageNet weights), timed in both memory formats at batch 1
and 16, 2 threads, median of 5 timed passes after a warm-up, and the largest difference of the outputs.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

from defectlab.anomaly.features import BackboneFeatures

CASES = {"mobilenet_v2": ["features.6", "features.13"], "efficientnet_lite0": ["_blocks.4", "_blocks.10"]}


def ms_per_image(fe: BackboneFeatures, x: torch.Tensor, fmt: torch.memory_format) -> float:
    fe.extractor.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    with torch.inference_mode():
        fe.extractor(x)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fe.extractor(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) / x.shape[0] * 1000


def main() -> None:
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    torch.manual_seed(0)
    rows = []
    for arch, layers in CASES.items():
        fe = BackboneFeatures(arch, layers, weights="imagenet")
        for batch in (1, 16):
            x = torch.randn(batch, 3, 256, 256)
            nchw = ms_per_image(fe, x, torch.contiguous_format)
            with torch.inference_mode():
                ref = fe.extractor(x)
            nhwc = ms_per_image(fe, x, torch.channels_last)
            with torch.inference_mode():
                out = fe.extractor(x.contiguous(memory_format=torch.channels_last))
            diff = max(float((out[k] - ref[k]).abs().max()) for k in layers)
            rows.append({"backbone": arch, "batch": batch, "nchw_ms_per_image": round(nchw, 2),
                         "channels_last_ms_per_image": round(nhwc, 2), "speedup": round(nchw / nhwc, 2),
                         "max_abs_diff": diff, "weights": fe.info.weights})
            print(rows[-1], flush=True)
    out = Path(__file__).resolve().parent / "results" / "backbone_speed.json"
    out.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "load": os.getloadavg(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
