"""Training throughput of the classify trainer vs bare forward+backward of the same model and batch.

    $VENV/bin/python bench/classify_throughput.py

Trainer: ``defectlab.classify.train.Trainer`` on magnetic_tile images decoded and resized once
(``cache_images``; decode time reported separately), the ``train_s`` column of its epochs (the
training pass only: batch indexing, augmentation, normalisation, forward, loss, backward, optimizer
step; validation and checkpoint writing are excluded), epochs 2-3 (epoch 1 is warm-up).
Bare: the same classifier and optimizer on one pre-made normalised float batch, forward + cross-entropy +
backward + step, the same number of batches. Bare runs before and after the trainer; their mean is used.
Writes ``bench/results/classify_throughput.json`` (load average included: the box is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from defectlab.classify.data import cache_images
from defectlab.classify.models import ModelConfig, build_classifier
from defectlab.classify.train import OPTIMIZERS, TrainConfig, Trainer
from defectlab.config import write_json
from defectlab.data.index import open_dataset

BENCH = Path(__file__).resolve().parent
DATA = BENCH.parent.parent / "shared" / "data" / "magnetic_tile"


def bare(model_cfg: ModelConfig, cfg: TrainConfig, n_batches: int, num_classes: int) -> float:
    torch.manual_seed(0)
    model = build_classifier(model_cfg, num_classes=num_classes, image_size=cfg.image_size).train()
    opt = OPTIMIZERS.get(cfg.optimizer)([p for p in model.parameters() if p.requires_grad], cfg)
    x = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size)
    y = torch.randint(0, num_classes, (cfg.batch_size,))
    for i in range(n_batches + 1):  # the first is warm-up
        if i == 1:
            t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return n_batches * cfg.batch_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="simple_cnn,resnet_scratch,mobilenet_v2")
    ap.add_argument("--augments", default="none,basic")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    index = open_dataset(DATA)
    recs = [r for r in index.records if r.defect_type != "good"][: args.images + 8]
    classes = sorted({r.defect_type for r in recs})
    c2i = {c: i for i, c in enumerate(classes)}
    t0 = time.perf_counter()
    data = cache_images(recs[: args.images], c2i, size=args.size)
    decode_s = time.perf_counter() - t0
    val = cache_images(recs[args.images:], c2i, size=args.size)
    results = []
    load0 = os.getloadavg()
    for name in args.models.split(","):
        weights = "imagenet" if name == "mobilenet_v2" else "none"
        model_cfg = ModelConfig(name=name, weights=weights)
        for augment in args.augments.split(","):
            cfg = TrainConfig(epochs=3, batch_size=args.batch, image_size=args.size, augment=augment,
                              optimizer="adam", deterministic=False)
            n_batches = args.images // args.batch
            b1 = bare(model_cfg, cfg, n_batches, len(classes))
            with tempfile.TemporaryDirectory() as tmp:
                tr = Trainer(model_cfg, cfg, classes, tmp, progress=False).fit(data, val)
            train_s = sum(h["train_s"] for h in tr.history_[1:])
            trainer_ips = len(data) * (len(tr.history_) - 1) / train_s
            b2 = bare(model_cfg, cfg, n_batches, len(classes))
            bare_ips = (b1 + b2) / 2
            row = {"model": name, "augment": augment, "image_size": args.size, "batch_size": args.batch,
                   "trainer_images_per_s": trainer_ips, "bare_images_per_s": bare_ips,
                   "bare_runs": [b1, b2], "ratio": trainer_ips / bare_ips}
            results.append(row)
            print(json.dumps(row))
    write_json(BENCH / "results" / "classify_throughput.json", {
        "command": "bench/classify_throughput.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
        "decode_resize_seconds": decode_s, "decoded_images": len(data), "threads": args.threads,
        "results": results, "loadavg_start": load0, "loadavg_end": os.getloadavg()})


if __name__ == "__main__":
    main()
