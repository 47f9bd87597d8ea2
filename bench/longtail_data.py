"""Data for the long-tail benchmark: datasets, seeded long-tail splits, cached frozen-backbone features.

Datasets (classes are ordered good first, then defect types by name, as the classify runner does):

* ``neu``: ../shared/data/neu_det, 6 defect classes x 300 (class = file-name prefix). Per seed:
  ``SplitConfig(val=0, test=0.2, long_tail=100)``: a balanced test set of 60 per class, untouched; the
  train split (240 per class) cut to the exponential profile 240, 95, 38, 15, 6, 2.
* ``magnetic_tile``: ../shared/data/magnetic_tile defect types (test/<defect>) plus ``good`` images
  (train/good + test/good) subsampled to ``GOOD_RATIO`` x all defect images; stratified 70/30 split.

Features: ImageNet mobilenet_v2 (``defectlab.backbones``, offline), frozen, global-average-pooled
1280-d, at ``SIZE`` px (squash). Every image gets a clean feature; every image that is in some seed's
train split also gets ``AUG_VIEWS`` features of augmented draws (the project's ``basic`` preset:
flips, rotation, random resized crop). Cached in ~/.cache/defectlab/bench/longtail/ (outside the repo).

    python bench/longtail_data.py features neu magnetic_tile     # build the caches (longtail_bench does it too)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from defectlab.classify.data import BatchAugment, cache_images
from defectlab.data.index import GOOD, DatasetIndex, SampleRecord, open_dataset
from defectlab.data.split import ManifestRow, SplitConfig, make_split

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CACHE = Path(os.environ.get("DEFECTLAB_BENCH_CACHE", Path.home() / ".cache" / "defectlab" / "bench" / "longtail"))
SIZE = 128
AUG_VIEWS = 2
GOOD_RATIO = 1.0  # magnetic_tile: good images kept = GOOD_RATIO x number of defect images
SEEDS = (0, 1, 2)
IMBALANCE = 100.0


def neu_index(root: Path = SHARED / "neu_det") -> DatasetIndex:
    """NEU-DET through the prefix layout of ``open_dataset`` (IMAGES/ + Validation_Images/, 6 x 300)."""
    return open_dataset(root)


def magnetic_index(root: Path = SHARED / "magnetic_tile", seed: int = 0) -> DatasetIndex:
    idx = open_dataset(root)
    defects = [r for r in idx.records if r.defect_type != GOOD]
    goods = [r for r in idx.records if r.defect_type == GOOD]
    keep = np.random.default_rng(1234).permutation(len(goods))[: int(round(GOOD_RATIO * len(defects)))]
    records = [SampleRecord(r.path, "all", r.defect_type, r.mask_path) for r in defects]
    records += [SampleRecord(goods[i].path, "all", GOOD) for i in sorted(keep)]
    return DatasetIndex(root=root, name="magnetic_tile", layout="folder", records=records)


def split_config(dataset: str, seed: int) -> SplitConfig:
    if dataset == "neu":
        return SplitConfig(val=0.0, test=0.2, long_tail=IMBALANCE, seed=seed)
    return SplitConfig(val=0.0, test=0.3, seed=seed)


def index_of(dataset: str) -> DatasetIndex:
    return neu_index() if dataset == "neu" else magnetic_index()


def split_rows(dataset: str, seed: int) -> list[ManifestRow]:
    return make_split(index_of(dataset), split_config(dataset, seed))


def cache_path(dataset: str) -> Path:
    return CACHE / f"{dataset}_mobilenet_v2_{SIZE}px_{AUG_VIEWS}aug.pt"


@torch.inference_mode()
def _features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.adaptive_avg_pool2d(model.features(x), 1).flatten(1)


def build_features(dataset: str, batch: int = 32) -> Path:
    """Clean + augmented features for every image (augmented only for images in some train split)."""
    from defectlab.backbones import build_backbone

    out = cache_path(dataset)
    if out.is_file():
        return out
    torch.manual_seed(0)
    index = index_of(dataset)
    classes = index.classes
    records = index.records
    train_paths = {str(r.path) for s in SEEDS for r in split_rows(dataset, s) if r.split == "train"}
    bb = build_backbone("mobilenet_v2", weights="imagenet")
    model = bb.model.eval()
    aug = BatchAugment("basic", SIZE, bb.info.mean, bb.info.std)
    c2i = {c: i for i, c in enumerate(classes)}
    images = cache_images(records, c2i, size=SIZE, desc=f"decode {dataset}")
    n = len(records)
    clean = torch.zeros(n, 1280)
    augmented = torch.full((n, AUG_VIEWS, 1280), float("nan"))
    need_aug = torch.tensor([str(r.path) in train_paths for r in records])
    for i in tqdm(range(0, n, batch), desc=f"features {dataset}"):
        x = images.images[i:i + batch]
        clean[i:i + batch] = _features(model, aug(x, train=False))
        sel = need_aug[i:i + batch].nonzero().flatten()
        if len(sel):
            for v in range(AUG_VIEWS):
                augmented[i + sel, v] = _features(model, aug(x[sel]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({"paths": [str(r.path) for r in records], "labels": images.labels, "classes": classes,
                "clean": clean, "aug": augmented, "weights": bb.info.weights, "size": SIZE}, tmp)
    os.replace(tmp, out)
    return out


def load_features(dataset: str) -> dict:
    return torch.load(build_features(dataset), map_location="cpu", weights_only=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("features")
    f.add_argument("datasets", nargs="+", choices=["neu", "magnetic_tile"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # on a shared, oversubscribed CPU one thread is several times faster than two
    for d in args.datasets:
        print(build_features(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
