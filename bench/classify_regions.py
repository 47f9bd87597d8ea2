"""Region-pooled defect types with the regions a detector finds instead of drawn masks (``train.regions_from``).

    nice python bench/classify_regions.py --anomaly-run RUN      # RUN: defectlab anomaly fit magnetic_tile --out RUN

magnetic_tile's five defect types on the grouped 5-fold of ``examples/classify_grouped.yaml`` (fold k tests,
fold k+1 is left out as the experiment's validation fold, three folds train), the ``pooled_probe`` attempt
(EfficientNet-Lite0, 256 px, standardised linear probe, L2 0.03, flip TTA). The probe is trained on the masks
alone or on the masks plus the anomaly run's detector regions (``with_detector_regions``), and tested on the
masks and on the detector's regions: balanced accuracy (mean ± std over the folds) over all test images,
and pooled over the folds on the images where the detector finds a region (its map above the pixel
threshold: the parts a bundle would type by region).
The detector never saw a defect (fitted on train/good), so its regions on these test images are fair.

Writes bench/results/classify_regions.json.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from defectlab.classify.data import ImageSet, cache_images
from defectlab.classify.experiment import load_experiment, load_folds, resolve_attempts
from defectlab.classify.pooled import with_detector_regions
from defectlab.classify.probe import ProbeFitter
from defectlab.classify.train import predict_logits
from defectlab.config import write_json
from defectlab.metrics.classification import balanced_accuracy

BENCH = Path(__file__).resolve().parent


def subset(images: ImageSet, idx: list[int]) -> ImageSet:
    return ImageSet(images.images[idx], images.labels[idx], [images.paths[i] for i in idx])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--anomaly-run", required=True, help="defectlab anomaly fit magnetic_tile --out RUN")
    ap.add_argument("--attempt", default="pooled_probe")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    cfg = load_experiment(BENCH.parent / "examples" / "classify_grouped.yaml")
    attempt = next(a for a in resolve_attempts(cfg) if a.name == args.attempt)
    t = attempt.train
    classes, folds, _ = load_folds(cfg.data)
    records = sorted({str(r.path): r for f in folds for r in f.test}.values(), key=lambda r: str(r.path))
    pos = {str(r.path): i for i, r in enumerate(records)}
    masks = cache_images(records, {c: i for i, c in enumerate(classes)}, size=t.image_size, resize=t.resize,
                         input="pooled")
    both = with_detector_regions(masks, args.anomaly_run, size=t.image_size, resize=t.resize)
    n = len(records)
    regions = subset(both, list(range(n, 2 * n)))
    found = regions.images[:, 3].flatten(1).amax(1) > 0  # the detector found a region in the image
    device = torch.device("cpu")
    preds: dict[tuple[str, str], np.ndarray] = {}
    for train_on in ("masks", "masks + detector regions"):
        cfg_t = copy.deepcopy(t)
        cfg_t.regions_from = str(args.anomaly_run) if train_on != "masks" else None
        for k, fold in enumerate(folds):
            idx = [pos[str(r.path)] for r in fold.train]
            train = subset(masks, idx) if train_on == "masks" else subset(both, idx + [n + i for i in idx])
            test_idx = [pos[str(r.path)] for r in fold.test]
            fitter = ProbeFitter(attempt.model, cfg_t, classes, BENCH / "results" / "tmp" / "classify_regions" /
                                 train_on.replace(" ", "_") / f"fold{k}", progress=False).fit(train, train)
            for test_on, test in (("masks", masks), ("detector regions", regions)):
                logits = predict_logits(fitter.setup_, test.images[test_idx], batch_size=t.eval_batch_size,
                                        device=device)
                out = preds.setdefault((train_on, test_on), np.zeros(n, dtype=int))
                out[test_idx] = logits.argmax(1).numpy()
    y = masks.labels.numpy()
    fold_of = np.zeros(n, dtype=int)
    for k, fold in enumerate(folds):
        fold_of[[pos[str(r.path)] for r in fold.test]] = k
    gated = found.numpy()
    rows = []
    for (train_on, test_on), p in preds.items():
        per_fold = [balanced_accuracy(y[fold_of == k].tolist(), p[fold_of == k].tolist()) for k in range(len(folds))]
        rows.append({"train": train_on, "test": test_on,
                     "balanced_acc": round(float(np.mean(per_fold)), 4),
                     "balanced_acc_std": round(float(np.std(per_fold)), 4),
                     "balanced_acc_where_found": round(balanced_accuracy(y[gated].tolist(), p[gated].tolist()), 4)})
        print(rows[-1], flush=True)
    write_json(BENCH / "results" / "classify_regions.json", {
        "command": "nice python bench/classify_regions.py --anomaly-run RUN",
        "anomaly_run": "defectlab anomaly fit magnetic_tile --out RUN (defaults)",
        "attempt": args.attempt, "classes": classes, "n_images": n,
        "found_share": round(float(gated.mean()), 4),
        "found_share_per_class": {c: round(float(gated[y == i].mean()), 4) for i, c in enumerate(classes)},
        "rows": rows, "wall_seconds": round(time.time() - t0, 1),
        "machine": "2-core CPU shared with other work",
    })


if __name__ == "__main__":
    main()
