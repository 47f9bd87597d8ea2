"""Short speed benchmarks per device (GPU vs CPU): PatchCore fit + inference (and its half-precision score
difference), one U-Net epoch, one classifier epoch, nearest-neighbour search. Run by ``bench/gpu_check.sh``.

    $VENV/bin/python bench/gpu_speed.py --devices cuda cpu --out bench/results/gpu_check.json

Every step is sized to take seconds on a GPU and well under a minute on 2 CPU cores, runs on synthetic data
(``defectlab.data.synthetic``, written to a temporary folder) and is timed after one warm-up. A step that
fails records its error and the script goes on (a partial JSON is better than none from a borrowed GPU).
``--tests-xml`` folds the JUnit summary of the ``gpu``-marked pytest run into the same JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from defectlab.devices import device_name, inference_autocast, resolve_device, synchronize

RESULTS = Path(__file__).resolve().parent / "results"


def timed(dev: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    synchronize(dev)
    t0 = time.perf_counter()
    out = fn()
    synchronize(dev)
    return time.perf_counter() - t0, out


def patchcore_step(dev: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    from defectlab.anomaly import build_model

    g = torch.Generator().manual_seed(0)
    n, s = args.pc_images, args.pc_size
    train = torch.randn(n, 3, s, s, generator=g)  # speed does not depend on content
    test = torch.randn(16, 3, s, s, generator=g)
    weights = "imagenet"
    try:
        model = build_model("patchcore", {"coreset_ratio": 0.01, "weights": weights})
    except Exception:  # noqa: BLE001 - no offline ImageNet weights on this machine: time random ones
        weights = "none"
        model = build_model("patchcore", {"coreset_ratio": 0.01, "weights": weights})
    model = model.to(dev).eval()
    fit_s, _ = timed(dev, lambda: model.fit([train[i:i + 8] for i in range(0, n, 8)]))
    model.predict(test[:8])  # warm-up
    b1_s, _ = timed(dev, lambda: [model.predict(test[i:i + 1]) for i in range(8)])
    b8_s, full = timed(dev, lambda: model.predict(test[8:16]))
    with inference_autocast(dev, half=True):
        model.predict(test[:8])
        half_s, half = timed(dev, lambda: model.predict(test[8:16]))
    diff = (half.scores.float() - full.scores.float()).abs()
    rel = diff / full.scores.float().abs().clamp_min(1e-6)
    return {"images": n, "size": s, "weights": weights, "bank": list(model.memory_bank_.shape),
            "fit_s": round(fit_s, 3), "ms_per_image_batch1": round(b1_s / 8 * 1000, 2),
            "ms_per_image_batch8": round(b8_s / 8 * 1000, 2),
            "half_ms_per_image_batch8": round(half_s / 8 * 1000, 2),
            "half_dtype": str(torch.float16 if dev.type != "cpu" else torch.bfloat16),
            "half_score_max_abs_diff": float(diff.max()), "half_score_max_rel_diff": float(rel.max())}


def unet_step(dev: torch.device, args: argparse.Namespace, data: Path) -> dict[str, Any]:
    from defectlab.data.index import open_dataset
    from defectlab.segment import SegConfig, Segmenter

    recs = [r for r in open_dataset(data).records if r.defect_type != "good" or r.split == "train"]
    cfg = SegConfig(size=args.seg_size, epochs=args.epochs + 1, batch_size=8, augment="basic")
    seg = Segmenter(cfg).fit(recs, device=dev)
    epochs = seg.history_[1:]  # the first is warm-up (cudnn autotuning, allocator)
    return {"images": len(recs), "size": args.seg_size, "epochs_timed": len(epochs),
            "s_per_epoch": round(sum(e["seconds"] for e in epochs) / len(epochs), 3)}


def classifier_step(dev: torch.device, args: argparse.Namespace, data: Path) -> dict[str, Any]:
    from defectlab.classify.data import cache_images
    from defectlab.classify.models import ModelConfig
    from defectlab.classify.train import TrainConfig, Trainer
    from defectlab.data.index import open_dataset

    recs = [r for r in open_dataset(data).records if r.split == "test"]
    classes = sorted({r.defect_type for r in recs})
    c2i = {c: i for i, c in enumerate(classes)}
    images = cache_images(recs, c2i, size=args.cls_size)
    cfg = TrainConfig(epochs=args.epochs + 1, batch_size=16, image_size=args.cls_size, augment="basic",
                      optimizer="adam", deterministic=False, device=str(dev))
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(ModelConfig(name=args.cls_model), cfg, classes, tmp, progress=False).fit(images, images)
    epochs = tr.history_[1:]
    return {"model": args.cls_model, "images": len(recs), "size": args.cls_size, "epochs_timed": len(epochs),
            "s_per_epoch": round(sum(e["seconds"] for e in epochs) / len(epochs), 3),
            "train_s_per_epoch": round(sum(e["train_s"] for e in epochs) / len(epochs), 3)}


def search_step(dev: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    from defectlab.anomaly.search import nearest

    g = torch.Generator().manual_seed(0)
    bank = torch.rand(args.bank, 152, generator=g).to(dev)
    queries = torch.rand(1024, 152, generator=g).to(dev)
    nearest(queries, bank)  # warm-up
    s, _ = timed(dev, lambda: [nearest(queries, bank) for _ in range(3)])
    return {"bank_rows": args.bank, "queries_per_image": 1024, "ms_per_image": round(s / 3 * 1000, 2)}


def test_summary(xml_path: Path | None, rc: int | None) -> dict[str, Any] | None:
    if xml_path is None:
        return None
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as exc:
        return {"error": f"no JUnit XML ({exc})", "pytest_rc": rc}
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    keys = ("tests", "failures", "errors", "skipped", "time")
    out: dict[str, Any] = {k: suite.get(k) for k in keys} if suite is not None else {}
    out["pytest_rc"] = rc
    out["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
                     if c.find("failure") is not None or c.find("error") is not None]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", nargs="+", default=["cuda", "cpu"])
    ap.add_argument("--pc-images", type=int, default=64)
    ap.add_argument("--pc-size", type=int, default=256)
    ap.add_argument("--seg-size", type=int, default=128)
    ap.add_argument("--cls-size", type=int, default=128)
    ap.add_argument("--cls-model", default="resnet_scratch")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    ap.add_argument("--bank", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch)")
    ap.add_argument("--tests-xml", type=Path, default=None)
    ap.add_argument("--tests-rc", type=int, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_check.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    doc: dict[str, Any] = {
        "what": "GPU vs CPU: PatchCore fit + inference (+ half), U-Net and classifier epochs, NN search",
        "settings": {k: str(v) for k, v in vars(args).items() if k not in ("out", "tests_xml", "tests_rc")},
        "torch": torch.__version__, "cuda": torch.version.cuda, "host": platform.node(),
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"{args.threads} threads",
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "gpu_tests": test_summary(args.tests_xml, args.tests_rc), "devices": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        from defectlab.data.synthetic import SynthConfig, make_synthetic

        data = make_synthetic(tmp, SynthConfig(kind="object", size=128, n_train=32, n_per_defect=16, seed=0))
        for name in args.devices:
            try:
                dev = resolve_device(name)
            except Exception as exc:  # noqa: BLE001
                doc["devices"][name] = {"error": str(exc)}
                continue
            entry: dict[str, Any] = {"device": str(dev), "name": device_name(dev)}
            steps = {"patchcore": lambda: patchcore_step(dev, args),
                     "unet": lambda: unet_step(dev, args, data),
                     "classifier": lambda: classifier_step(dev, args, data),
                     "nn_search": lambda: search_step(dev, args)}
            for step, fn in steps.items():
                t0 = time.perf_counter()
                try:
                    entry[step] = fn()
                except Exception as exc:  # noqa: BLE001 - record and go on
                    entry[step] = {"error": f"{type(exc).__name__}: {exc}",
                                   "trace": traceback.format_exc()[-1500:]}
                took = time.perf_counter() - t0
                print(f"{name:>6} {step:<10} {took:6.1f} s  {json.dumps(entry[step])[:300]}", flush=True)
            doc["devices"][name] = entry
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(doc, indent=2) + "\n")  # partial results survive a later crash
    doc["speedup_gpu_vs_cpu"] = speedups(doc["devices"])
    doc["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


def speedups(devices: dict[str, Any]) -> dict[str, float]:
    gpu = next((v for k, v in devices.items() if k.startswith("cuda") and "error" not in v), None)
    cpu = devices.get("cpu")
    if gpu is None or cpu is None:
        return {}
    pairs = {"patchcore_fit": ("patchcore", "fit_s"),
             "patchcore_inference_b8": ("patchcore", "ms_per_image_batch8"),
             "unet_epoch": ("unet", "s_per_epoch"), "classifier_epoch": ("classifier", "s_per_epoch"),
             "nn_search": ("nn_search", "ms_per_image")}
    out = {}
    for key, (step, field) in pairs.items():
        try:
            out[key] = round(cpu[step][field] / gpu[step][field], 2)
        except (KeyError, TypeError, ZeroDivisionError):
            continue
    return out


if __name__ == "__main__":
    main()
