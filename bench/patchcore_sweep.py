"""Quick PatchCore recipe sweep on magnetic_tile from cached backbone features (how the defaults were chosen).

    python bench/patchcore_sweep.py --backbone efficientnet_lite0 --layers _blocks.4 _blocks.10 --sigma 8 --standardize
    python bench/patchcore_sweep.py --backbone mobilenet_v2 --layers features.6 features.13 --sigma 4

Raw layer maps of all train/test images are extracted once per (backbone, size, standardize) and cached in
``$SWEEP_CACHE`` (default /tmp/defectlab_sweep); a run then only aggregates, builds the coreset (1%, the
library's ``StreamingCoreset``), scores and evaluates. Scores are the plain maximum of the patch distances
(no re-weighting) and pixel metrics are taken on the letterbox content at half the input resolution, so the
numbers are for ranking recipes: the library's own figures come from ``bench/anomaly_default.py``
(re-weighted score, maps at each image's original size), which runs about 0.03 lower in pixel AUROC.
Per defect type it also prints how its defect pixels separate from good images' pixels, from the rest of
their own images and from the defect-free area of the other defective images, and how close each test image's
nearest training image is (the `uneven` and split diagnosis in docs/anomaly.md).
Appends one JSON line per run to bench/results/patchcore_sweep.jsonl; ``--figure PNG`` also draws some
`uneven` images and their maps (docs/img/uneven_maps.png).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from defectlab.anomaly.coreset import StreamingCoreset
from defectlab.anomaly.features import BackboneFeatures, gaussian_blur, patch_embedding, upsample
from defectlab.anomaly.geometry import letterbox_box
from defectlab.anomaly.search import torch_nearest as nearest
from defectlab.data.dataset import DefectDataset
from defectlab.data.index import open_dataset
from defectlab.data.io import load_mask, read_info
from defectlab.data.transforms import PairTransform
from defectlab.metrics.anomaly import auroc

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("DATA", HERE.parents[1] / "shared" / "data" / "magnetic_tile"))


def extract(backbone: str, layers: list[str], size: int, standardize: bool) -> dict:
    cache = Path(os.environ.get("SWEEP_CACHE", "/tmp/defectlab_sweep"))
    path = cache / f"{backbone}_{size}_{'std' if standardize else 'raw'}_{'-'.join(layers)}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    index = open_dataset(DATA)
    fe = BackboneFeatures(backbone, layers, weights="imagenet")
    tf = PairTransform(size, resize="letterbox", mean=fe.info.mean, std=fe.info.std, standardize=standardize)
    out: dict = {}
    for split in ("train", "test"):
        feats: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        meta = []
        for s in DataLoader(DefectDataset(index.select(split=split), tf), batch_size=16):
            f = fe(s.image)
            for name in layers:
                feats[name].append(f[name].half())
            meta += [(p, int(s.label[i]), s.defect_type[i]) for i, p in enumerate(s.path)]
        out[split] = ({k: torch.cat(v) for k, v in feats.items()}, meta)
    records = {str(r.path): r for r in index.select(split="test")}
    out["masks"] = []
    for p, _, _ in out["test"][1]:
        info, r = read_info(p), records[p]
        hw = (info.height, info.width)
        out["masks"].append(load_mask(r.mask_path, size=hw[::-1]) if r.mask_path else np.zeros(hw, bool))
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def embed(feats: dict, layers: list[str], k: int, sl: slice | list[int]) -> torch.Tensor:
    return patch_embedding({name: feats[name][sl].float() for name in layers}, neighbourhood=k)


def run(args: argparse.Namespace) -> dict:
    t0 = time.time()
    data = extract(args.backbone, args.layers, args.size, args.standardize)
    (train, _), (test, meta) = data["train"], data["test"]
    sampler = None
    n = next(iter(train.values())).shape[0]
    for i in range(0, n, 16):
        e = embed(train, args.layers, args.k, slice(i, i + 16))
        rows = e.permute(0, 2, 3, 1).reshape(-1, e.shape[1])
        sampler = sampler or StreamingCoreset(args.coreset_ratio, rows.shape[1], seed=0)
        sampler.add(rows)
    bank = sampler.finish()
    bank_sq = (bank * bank).sum(1)
    scores, maps, masks = [], [], []
    for i in range(0, len(meta), 16):
        e = embed(test, args.layers, args.k, slice(i, i + 16))
        b, c, h, w = e.shape
        d = nearest(e.permute(0, 2, 3, 1).reshape(-1, c), bank, bank_sq)[0].view(b, h, w)
        scores += d.flatten(1).max(1).values.tolist()
        full = F.avg_pool2d(gaussian_blur(upsample(d, (args.size, args.size)), args.sigma)[:, None], 2)[:, 0]
        for j in range(b):
            mask = data["masks"][i + j]
            top, left, nh, nw = (v // 2 for v in letterbox_box(mask.shape, (args.size, args.size)))
            maps.append(full[j, top:top + nh, left:left + nw].numpy())
            m = torch.from_numpy(mask.astype(np.float32))[None, None]
            masks.append(F.interpolate(m, size=(nh, nw), mode="nearest")[0, 0].numpy() > 0.5)
    labels, types, scores = np.array([m[1] for m in meta]), [m[2] for m in meta], np.array(scores)
    result = {"config": vars(args), "image_auroc": auroc(labels, scores),
              "pixel_auroc": auroc(np.concatenate([m.ravel() for m in masks]),
                                   np.concatenate([m.ravel() for m in maps])),
              "per_type": {}, "bank": list(bank.shape)}
    def separation(pos: list[np.ndarray], neg: list[np.ndarray]) -> float:
        p, n = np.concatenate(pos), np.concatenate(neg)
        return auroc(np.r_[np.ones(len(p)), np.zeros(len(n))], np.r_[p, n])

    good_idx = [i for i, x in enumerate(types) if x == "good"]
    good = [maps[i].ravel() for i in good_idx]
    pooled = {k: F.normalize(v[args.layers[-1]].float().mean((2, 3)), dim=1)
              for k, v in (("train", train), ("test", test))}
    nearest_cos = (pooled["test"] @ pooled["train"].T).max(1).values.numpy()
    result["good_nearest_train_cosine"] = float(np.median(nearest_cos[good_idx]))
    n_defect_px = sum(int(m.sum()) for m in masks)
    for t in sorted(set(types) - {"good"}):
        own = [i for i, x in enumerate(types) if x == t]
        pos = [maps[i][masks[i]] for i in own]
        result["per_type"][t] = {
            "image_auroc": auroc(labels[own + good_idx], scores[own + good_idx]),
            "pixel_auroc": separation(pos, [maps[i][~masks[i]] for i in own] + good),  # vs good + own negatives
            "vs_good_images": separation(pos, good),  # defect pixels vs every pixel of the good test images
            "vs_own_image": separation(pos, [maps[i][~masks[i]] for i in own]),  # vs the rest of their images
            # vs the defect-free area of the other types' defective images
            "vs_other_defective_images": separation(pos, [maps[i][~masks[i]] for i, x in enumerate(types)
                                                          if x not in (t, "good")]),
            # how close each image's nearest training image is (cosine of pooled stride-16 features), median
            "nearest_train_cosine": float(np.median(nearest_cos[own])),
            "share_of_defect_pixels": sum(int(masks[i].sum()) for i in own) / n_defect_px,
        }
    result["seconds"] = time.time() - t0
    if args.figure:
        uneven_figure(args.figure, [m[0] for m in meta], types, maps, masks, good)
    return result


def uneven_figure(path: str, paths: list[str], types: list[str], maps: list, masks: list, good: list) -> None:
    """Every 13th `uneven` test image with its ground-truth outline, above its map (colour scale from the
    good test images' pixel scores: median to 1.5 x the 99th percentile)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    chosen = [i for i, t in enumerate(types) if t == "uneven"][::13][:7]
    low, high = np.percentile(np.concatenate(good), [50, 99])
    fig, axes = plt.subplots(2, len(chosen), figsize=(2.6 * len(chosen), 6.5))
    for col, i in zip(axes.T, chosen, strict=False):
        h, w = maps[i].shape
        col[0].imshow(np.asarray(Image.open(paths[i]).convert("L").resize((w, h))), cmap="gray")
        col[1].imshow(maps[i], cmap="jet", vmin=low, vmax=1.5 * high)
        for ax, colour in zip(col, ("r", "w"), strict=False):
            ax.contour(masks[i], levels=[0.5], colors=colour, linewidths=0.8)
            ax.axis("off")
        col[0].set_title(Path(paths[i]).name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=70)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--layers", nargs="+", default=["_blocks.4", "_blocks.10"])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--k", type=int, default=3, help="neighbourhood")
    p.add_argument("--sigma", type=float, default=8.0)
    p.add_argument("--coreset-ratio", type=float, default=0.01)
    p.add_argument("--standardize", action="store_true")
    p.add_argument("--figure", help="also draw uneven test images and their maps to this PNG")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    res = run(args)
    print(f"image AUROC {res['image_auroc']:.3f} pixel AUROC {res['pixel_auroc']:.3f} | " +
          " ".join(f"{t} {v['image_auroc']:.3f}/{v['pixel_auroc']:.3f}" for t, v in res["per_type"].items()))
    for t, v in res["per_type"].items():
        print(f"  {t:9s} {v['share_of_defect_pixels']:6.1%} of defect pixels; pixel AUROC vs good images "
              f"{v['vs_good_images']:.3f}, vs the rest of their own images {v['vs_own_image']:.3f}, vs the "
              f"defect-free area of other defective images {v['vs_other_defective_images']:.3f}; "
              f"nearest training image cosine {v['nearest_train_cosine']:.4f}")
    print(f"  good images' nearest training image cosine {res['good_nearest_train_cosine']:.4f}")
    with open(HERE / "results" / "patchcore_sweep.jsonl", "a") as fh:
        fh.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
