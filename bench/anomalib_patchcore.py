"""anomalib 2.7 PatchCore on the benchmark's preprocessed tensors (run by the anomalib venv's python).

    /root/.cache/defectlab/anomalib-venv/bin/python bench/anomalib_patchcore.py \
        --cache bench/results/tmp/<tag> --out DIR --weights mobilenet_v2-b0353104.pth

Started by ``bench/anomaly_bench.py``; not meant to be run by hand. Uses anomalib's own torch model
(``anomalib.models.image.patchcore.torch_model.PatchcoreModel``) the way its Lightning module does,
without the trainer: training mode collects embeddings batch by batch, ``subsample_embedding(ratio)``
runs anomalib's k-center greedy coreset (``KCenterGreedy``), eval mode returns ``pred_score`` and
``anomaly_map``. The backbone is an ``nn.Module``: torchvision's mobilenet_v2 with the same ImageNet
state dict file defectlab uses (anomalib's ``TimmFeatureExtractor`` accepts a module and extracts the
named layers with torchvision's ``create_feature_extractor``), so ``pre_trained=False`` and nothing is
downloaded. Timing, RSS and output files come from the shared harness ``anomaly_bench.timed_run``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anomaly_bench import common_args, timed_run  # noqa: E402  (numpy-only part of the driver)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common_args(p)
    p.add_argument("--probe-steps", type=int, default=0,
                   help="only estimate the full fit: extract all features, project, time this many greedy steps")
    p.add_argument("--probe-random-patches", type=int, default=0,
                   help="with --probe-steps: skip the CNN, use this many seeded random 128-d patches instead")
    args = p.parse_args()

    import torch
    import torchvision

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # KCenterGreedy's random start and sparse projection
    import anomalib
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    if args.probe_steps and args.probe_random_patches:
        probe(None, args)
        return
    backbone = torchvision.models.mobilenet_v2(weights=None)
    backbone.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    backbone.eval()
    model = PatchcoreModel(layers=list(args.layers), backbone=backbone, pre_trained=False,
                           num_neighbors=args.num_neighbours)

    if args.probe_steps:
        probe(model, args)
        return

    def fit(train: Iterator[np.ndarray]) -> None:
        model.train()
        with torch.no_grad():
            for images in train:
                model(torch.from_numpy(images))
        model.subsample_embedding(args.coreset_ratio)
        model.eval()

    def predict(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            out = model(torch.from_numpy(images))
        return out.pred_score.numpy(), out.anomaly_map[:, 0].numpy()

    timed_run(args.cache, args.out, fit, predict, batch_size=args.batch_size, n_batch1=args.n_batch1,
              extra=lambda: {"side": "anomalib", "anomalib": anomalib.__version__, "torch": torch.__version__,
                     "summary": {"memory_bank": list(model.memory_bank.shape)}})


def probe(model, args: argparse.Namespace) -> None:
    """Estimate anomalib's fit time where running it is out of reach: its coreset step is timed, not run.

    Feature extraction and the sparse random projection run in full (as ``subsample_embedding`` would);
    ``--probe-steps`` greedy iterations of ``KCenterGreedy`` (its own ``update_distances`` /
    ``get_new_idx``) are timed; the estimate is ``extraction + projection + per_step * coreset_size``.
    """
    import json
    import time

    import torch
    from anomalib.models.components import KCenterGreedy
    from anomaly_bench import batches, peak_rss_mb

    t0 = time.perf_counter()
    if args.probe_random_patches:  # the greedy cost does not depend on the values, only on N and d
        bank = torch.randn(args.probe_random_patches, 128, generator=torch.Generator().manual_seed(0))
    else:
        model.train()
        with torch.no_grad():
            for images in batches(args.cache / "train.f32", args.batch_size):
                model(torch.from_numpy(images))
        bank = torch.vstack(model.embedding_store)
        model.embedding_store.clear()
    extraction_s = time.perf_counter() - t0
    sampler = KCenterGreedy(embedding=bank, sampling_ratio=args.coreset_ratio)
    t0 = time.perf_counter()
    sampler.model.fit(bank)
    sampler.features = sampler.model.transform(bank)
    sampler.reset_distances()
    projection_s = time.perf_counter() - t0
    idx = torch.randint(high=sampler.n_observations, size=(1,)).squeeze()
    steps = min(args.probe_steps, sampler.coreset_size - 1)
    t0 = time.perf_counter()
    for _ in range(steps):
        sampler.update_distances(cluster_center=idx)
        idx = sampler.get_new_idx()
        sampler.min_distances.scatter_(0, idx.unsqueeze(0).unsqueeze(1), 0.0)
    per_step = (time.perf_counter() - t0) / steps
    result = {
        "side": "anomalib (probe: estimated, not run)", "n_patches": int(bank.shape[0]),
        "random_patches": bool(args.probe_random_patches),
        "projected_dim": int(sampler.features.shape[1]), "coreset_size": int(sampler.coreset_size),
        "extraction_s": extraction_s, "projection_s": projection_s, "greedy_steps_timed": steps,
        "greedy_s_per_step": per_step,
        "estimated_fit_s": extraction_s + projection_s + per_step * (sampler.coreset_size - 1),
        "peak_rss_mb_partial": peak_rss_mb(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "probe.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
