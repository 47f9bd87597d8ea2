"""End-to-end verdict benchmark on magnetic_tile (tile split): one answer per part over {good, blowhole,
break, crack, fray, uneven}.

Per seed, k labelled tiles per defect type are drawn (``--shots``, default ``half``; all shots of a tile on
one side, ``magnetic_tile_tiles.csv``); everything is tested on the defect images of the other tiles + all
test/good images:

* (a) a classifier alone with a ``good`` class: logistic regression on the detector's pooled patch
  features (mean and max over the image), trained on the same labelled images + the good negatives;
* (b) the anomaly gate alone: the detector's deployable threshold (2 classes: good / defect);
* (c) the bundle: gate + few-shot head + decision rule (``defectlab.verdict.rule.decide``), thresholds
  from good images only (the detector's held-out images);
* (d) the same bundle with a region-pooled classifier (``pooled_probe`` of ``examples/classify_grouped.yaml``,
  fitted on the same labelled images) typing each region the rule finds, averaged with the head's types;
  (e) that classifier alone types the regions. Same gate as (c): only the type can change;
* (f), (g): as (d), (e) with the classifier also trained on the regions the detector finds in the labelled
  images (``train.regions_from``: the regions it is given at inference).

Reports the 6-class confusion, balanced accuracy, macro-F1, good false-alarm rate (and the 2-class
numbers), plus CPU latency per image of the bundle vs the anomaly run alone (``predict_images`` on the
same images, one at a time, alternating, on a shared machine: compare the ratio).

    python bench/verdict_bench.py --anomaly-run /tmp/verdict_runs/mt --cache /tmp/verdict_runs/mt_feats.pt

Writes bench/results/verdict_magnetic_tile.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from defectlab.anomaly.base import AnomalyOutput
from defectlab.anomaly.detector import Detector
from defectlab.config import write_json
from defectlab.data.index import GOOD
from defectlab.metrics.classification import balanced_accuracy, confusion_matrix, macro_f1
from defectlab.verdict.bundle import Bundle, build_bundle, region_probs
from defectlab.verdict.fewshot import RefineConfig, Refiner
from defectlab.verdict.refine_run import Features, draw_shots, save_refiner, training_pairs
from defectlab.verdict.rule import VerdictRule, decide

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewshot_curve import DATA, ROOT, data_args, shared_setup  # noqa: E402

VARIANTS = ("a_classifier", "b_gate", "c_bundle", "d_bundle_pooled", "e_bundle_pooled_only",
            "f_bundle_pooled_regions", "g_bundle_pooled_regions_only")


def scores_of(y: list[str], p: list[str], labels: list[str]) -> dict:
    good = [pp for yy, pp in zip(y, p, strict=True) if yy == GOOD]
    flagged = [pp != GOOD for yy, pp in zip(y, p, strict=True) if yy != GOOD]
    y2 = ["defect" if t != GOOD else GOOD for t in y]
    p2 = ["defect" if t != GOOD else GOOD for t in p]
    return {
        "balanced_accuracy": round(balanced_accuracy(y, p), 4),
        "macro_f1": round(macro_f1(y, p, labels), 4),
        "good_false_alarm_rate": round(float(np.mean([q != GOOD for q in good])), 4),
        "defect_recall": round(float(np.mean(flagged)), 4),  # defective parts not called good
        "balanced_accuracy_2class": round(balanced_accuracy(y2, p2), 4),
        "labels": labels + sorted(set(p) - set(labels)),
        "confusion": confusion_matrix(y, p, labels + sorted(set(p) - set(labels))).tolist(),
    }


def pooled(feats: Features, i: int) -> np.ndarray:
    e = feats.emb[i].float()
    return torch.cat([e.mean((1, 2)), e.amax((1, 2)), torch.tensor([feats.scores[i]])]).numpy()


def classifier_alone(feats: Features, train: list[int], test: list[int]) -> list[str]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.stack([pooled(feats, i) for i in train])
    y = [feats.records[i].defect_type for i in train]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1, class_weight="balanced"))
    clf.fit(x, y)
    return list(clf.predict(np.stack([pooled(feats, i) for i in test])))


def pooled_classifier(feats: Features, train: list[int], classes: list[str], seed: int, out: Path,  # noqa: ANN201
                      regions_from: Path | None = None):
    """The region-pooled probe of ``examples/classify_grouped.yaml`` (``pooled_probe``) on the labelled
    defect images (their masks; with ``regions_from``, an anomaly run, also the regions its detector finds
    in them), as a ``Predictor``."""
    from defectlab.classify.data import cache_images
    from defectlab.classify.models import ModelConfig
    from defectlab.classify.pooled import with_detector_regions
    from defectlab.classify.predict import Predictor
    from defectlab.classify.probe import ProbeFitter
    from defectlab.classify.train import TrainConfig

    recs = [feats.records[i] for i in train]
    model = ModelConfig(name="efficientnet_lite0", weights="imagenet")
    cfg = TrainConfig(image_size=256, input="pooled", probe="linear", weight_decay=0.03, tta="flips", seed=seed,
                      regions_from=None if regions_from is None else str(regions_from))
    images = cache_images(recs, {c: j for j, c in enumerate(classes)}, size=256, input="pooled")
    if regions_from is not None:
        images = with_detector_regions(images, regions_from, size=256)
    ProbeFitter(model, cfg, classes, out, progress=False).fit(images, images)
    return Predictor(out / "best.pt", device="cpu").load()


def latency(det_run: Path, bundle: Path, images: list[Path], repeats: int) -> dict:
    det, b = Detector.load(det_run), Bundle.load(bundle)
    det.predict_images(images[:2], batch_size=1)
    b.predict_images(images[:2], batch_size=1)
    t_det, t_b = [], []
    for _ in range(repeats):
        for im in images:
            t0 = time.perf_counter()
            det.predict_images([im], batch_size=1)
            t_det.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            b.predict_images([im], batch_size=1)
            t_b.append(time.perf_counter() - t0)
    md, mb = 1000 * float(np.median(t_det)), 1000 * float(np.median(t_b))
    return {
        "anomaly_run_ms_median": round(md, 1),
        "bundle_ms_median": round(mb, 1),
        "ratio": round(mb / md, 3),
        "images": len(images),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "loadavg": list(os.getloadavg()),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--anomaly-run", required=True)
    data_args(ap)
    ap.add_argument("--shots", default="half")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--min-type-probability", type=float, default=0.5)
    ap.add_argument("--latency-images", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "verdict_magnetic_tile.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data, run = Path(args.data), Path(args.anomaly_run)
    if not data.is_dir():
        print(f"{data}: dataset not present", file=sys.stderr)
        return 2
    det, feats, parts, defects, goods, keys, classes = shared_setup(args)
    labels = [GOOD, *classes]
    thr = det.thresholds
    k = args.shots if args.shots == "half" else int(args.shots)
    rule = VerdictRule(min_type_probability=args.min_type_probability)
    per_seed, bundle_dir = [], None
    for seed in args.seeds:
        chosen = [defects[j] for j in draw_shots([feats.records[i] for i in defects], keys, k, seed)]
        test_idx = [i for i in defects if i not in set(chosen)] + goods
        truth = [feats.records[i].defect_type for i in test_idx]
        train = chosen + parts["negatives"]
        xs, ys = training_pairs(feats, train, classes, thr.pixel)
        cfg = RefineConfig(steps=args.steps, seed=seed)
        head = Refiner(xs[0].shape[0], classes, cfg.hidden).fit(xs, ys, cfg, shots=len(chosen))
        head.set_threshold(
            [float(_refine(head, feats, i, thr.pixel)[0].max()) for i in parts["holdout"]], cfg
        )
        classifiers = [pooled_classifier(feats, chosen, classes, seed, Path(tempfile.mkdtemp(prefix="verdict_cls_")),
                                         regions_from=source) for source in (None, run)]
        pred_c, pred_b = [], []
        typed: list[list[str]] = [[] for _ in range(4)]  # (d), (e), (f), (g)
        for i in test_idx:
            rmap, tmaps = _refine(head, feats, i, thr.pixel)
            common = dict(
                anomaly_score=feats.scores[i],
                anomaly_threshold=thr.image,
                anomaly_map=feats.maps[i].numpy(),
                pixel_threshold=thr.pixel,
                refined_map=rmap.numpy(),
                refined_threshold=float(head.threshold_),
                classes=classes,
                rule=rule,
            )
            v = decide(type_maps=tmaps.numpy(), **common)
            pred_c.append(GOOD if v.verdict == "ok" else v.type)
            pred_b.append("defect" if feats.scores[i] > thr.image else GOOD)
            if v.verdict == "ok":  # the same gate: the classifier only changes the type
                for pred in typed:
                    pred.append(GOOD)
                continue
            # the maps (and so the regions) are at the detector's input size: the image is resized to it
            image = Image.open(feats.records[i].path).convert("RGB").resize(rmap.shape[::-1], Image.BILINEAR)
            for j, classifier in enumerate(classifiers):
                per_region = region_probs(classifier, image)
                typed[2 * j].append(decide(type_maps=tmaps.numpy(), region_probs=per_region, **common).type)
                typed[2 * j + 1].append(decide(region_probs=per_region, **common).type)
        pred_a = classifier_alone(feats, train, test_idx)
        row = {
            "seed": seed,
            "n_test": len(test_idx),
            "n_labelled": len(chosen),
            "refined_threshold": float(head.threshold_),
            "a_classifier": scores_of(truth, pred_a, labels),
            "b_gate": scores_of(truth, pred_b, labels),
            "c_bundle": scores_of(truth, pred_c, labels),
            **{m: scores_of(truth, pred, labels) for m, pred in zip(VARIANTS[3:], typed, strict=True)},
        }
        per_seed.append(row)
        write_json(args.out, {"summary": _summary(per_seed), "per_seed": per_seed, "args": vars(args),
                              "machine": "2-core machine shared with other work (CPU)"})
        print(
            seed,
            {
                m: (row[m]["balanced_accuracy"], row[m]["good_false_alarm_rate"])
                for m in VARIANTS
            },
            flush=True,
        )
        if bundle_dir is None:
            tmp = Path(tempfile.mkdtemp(prefix="verdict_bench_"))
            save_refiner(
                head, tmp / "head", det, run, cfg, shots_used=[str(feats.records[i].path) for i in chosen]
            )
            bundle_dir = build_bundle(run, tmp / "bundle", refine=tmp / "head", rule=rule)
            lat_images = [
                feats.records[i].path for i in test_idx[:: max(1, len(test_idx) // args.latency_images)]
            ]
    summary = _summary(per_seed)
    result = {
        "summary": summary,
        "per_seed": per_seed,
        "args": vars(args),
        "latency": latency(run, bundle_dir, lat_images[: args.latency_images], 2),  # type: ignore[arg-type]
        "machine": f"2-core machine shared with other work (CPU, torch {args.threads} threads)",
    }
    write_json(args.out, result)
    print(summary, result["latency"])
    return 0


def _summary(per_seed: list[dict]) -> dict:
    keys = ("balanced_accuracy", "macro_f1", "good_false_alarm_rate", "defect_recall", "balanced_accuracy_2class")
    return {m: {k: round(float(np.mean([r[m][k] for r in per_seed])), 4) for k in keys}
            for m in VARIANTS}


def _refine(head: Refiner, feats: Features, i: int, thr: float) -> tuple[torch.Tensor, torch.Tensor]:
    out = AnomalyOutput(torch.tensor([feats.scores[i]]), feats.maps[i][None])
    rmap, types = head.refine(feats.emb[i][None].float(), out, thr)
    return rmap[0], types[0]


if __name__ == "__main__":
    sys.exit(main())
