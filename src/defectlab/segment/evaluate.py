"""One evaluation for every localiser: per-image score maps + a threshold -> IoU/Dice per defect type,
false alarms on good images, pixel AUROC and AUPRO.

It takes maps, not models, so a supervised U-Net's probabilities and a good-only anomaly detector's
anomaly maps (thresholded at the detector's own threshold) land in the same table. Counts are pooled
over the images of each defect type (sum of intersections / sum of unions), at each image's own size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from defectlab.data.dataset import load_pair
from defectlab.data.index import GOOD, SampleRecord
from defectlab.errors import BadInputError
from defectlab.metrics import (
    MetricInputError,
    aupro,
    binary_dice,
    binary_iou,
    f1_max,
    per_class_dice,
    per_class_iou,
    pixel_auroc,
)


def ground_truth(records: Sequence[SampleRecord]) -> list[np.ndarray]:
    """HxW bool masks of ``records`` (all-zero for good images), sizes checked against the images."""
    return [load_pair(r, "L")[1] for r in records]


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0, bool)


def evaluate_maps(maps: Sequence[np.ndarray], records: Sequence[SampleRecord], threshold: float, *,
                  masks: Sequence[np.ndarray] | None = None, class_maps: Sequence[np.ndarray] | None = None,
                  classes: Sequence[str] | None = None, fpr_limit: float = 0.3) -> dict[str, Any]:
    """Metrics of score ``maps`` (HxW, higher = more defect) against the records' masks.

    ``class_maps`` (C x H x W, one channel per name in ``classes``) adds class-aware IoU/Dice: a pixel's
    predicted type is its strongest channel where that channel is above ``threshold``.
    """
    if len(maps) != len(records):
        raise ValueError(f"{len(maps)} maps for {len(records)} records")
    gts = list(masks) if masks is not None else ground_truth(records)
    for m, g, r in zip(maps, gts, records, strict=True):
        if m.shape != g.shape:
            raise BadInputError(r.path, f"map is {m.shape[1]}x{m.shape[0]} but the mask is "
                                        f"{g.shape[1]}x{g.shape[0]}")
    preds = [np.asarray(m) > threshold for m in maps]
    out: dict[str, Any] = {"threshold": float(threshold), "n_images": len(records), "per_type": {}}
    types = sorted({r.defect_type for r in records} - {GOOD})
    for dt in types + ["all_defects"]:
        idx = [i for i, r in enumerate(records) if (r.defect_type == dt if dt != "all_defects" else r.label)]
        if not idx:
            continue
        p, g = _flat([preds[i] for i in idx]), _flat([gts[i] for i in idx])
        found = [bool((preds[i] & gts[i]).any()) for i in idx if gts[i].any()]
        out["per_type"][dt] = {
            "n": len(idx), "iou": binary_iou(p, g), "dice": binary_dice(p, g),
            "per_image_iou": float(np.mean([binary_iou(preds[i], gts[i]) for i in idx])),
            "detected": float(np.mean(found)) if found else float("nan"),  # share of images with a hit
        }
    types_present = [t for t in types if t in out["per_type"]]
    if types_present:
        out["mean_iou"] = float(np.mean([out["per_type"][t]["iou"] for t in types_present]))
        out["mean_dice"] = float(np.mean([out["per_type"][t]["dice"] for t in types_present]))
    good = [i for i, r in enumerate(records) if r.defect_type == GOOD]
    if good:
        out["good"] = {"n": len(good),
                       "images_with_false_alarm": float(np.mean([preds[i].any() for i in good])),
                       "false_pixel_rate": float(_flat([preds[i] for i in good]).mean())}
    fmaps = [np.asarray(m, dtype=np.float32) for m in maps]
    try:
        out["pixel_auroc"] = pixel_auroc(list(gts), fmaps)
        out["aupro"] = aupro(list(gts), fmaps, fpr_limit=fpr_limit)
        # upper bound, tuned on these labels (not deployable): the best pooled Dice (= pixel F1) over
        # all images incl. good ones, and its threshold
        f1, thr = f1_max(list(gts), fmaps)
        out["oracle"] = {"threshold": float(thr), "dice_all": float(f1), "iou_all": float(f1 / (2.0 - f1))}
    except MetricInputError as exc:  # e.g. no defect pixel at all in the test set
        out["pixel_auroc"] = out["aupro"] = None
        out["pixel_metrics_note"] = str(exc)
    if class_maps is not None and classes:
        out["class_aware"] = _class_aware(class_maps, gts, records, list(classes), threshold)
    return out


def _class_aware(class_maps: Sequence[np.ndarray], gts: list[np.ndarray], records: Sequence[SampleRecord],
                 classes: list[str], threshold: float) -> dict[str, Any]:
    idx = {c: i + 1 for i, c in enumerate(classes)}
    pred_l, true_l = [], []
    for cm, g, r in zip(class_maps, gts, records, strict=True):
        label = np.where(cm.max(axis=0) > threshold, cm.argmax(axis=0) + 1, 0)
        pred_l.append(label.ravel())
        true_l.append((g * idx.get(r.defect_type, 0)).ravel())
    p, t = np.concatenate(pred_l), np.concatenate(true_l)
    iou = per_class_iou(p, t, len(classes) + 1)
    dice = per_class_dice(p, t, len(classes) + 1)
    return {c: {"iou": float(iou[i + 1]), "dice": float(dice[i + 1])} for i, c in enumerate(classes)}
