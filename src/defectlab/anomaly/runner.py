"""Fit a detector on a dataset's good images and evaluate it on its test split (the CLI's engine).

    >>> cfg = RunConfig(data="data/magnetic_tile", model="patchcore")
    >>> det = fit_detector(cfg)                       # thresholds from held-out good images
    >>> result = evaluate(det, evaluation_records(index))     # metrics at each image's original resolution

Which images are used: the ``train`` split's good images are fitted on, except ``holdout`` of them
(default 10%, chosen with ``seed``) kept aside to set the deployable thresholds; a ``val`` split's good
images (from ``defectlab data split`` manifests) are used for the thresholds instead when present.
Several images often show one part (views, lightings); whole parts are held out, because held-out shots
whose siblings are fitted on score like training images and set the threshold too low (on magnetic_tile:
16% instead of 4% false alarms on new tiles, bench/threshold_holdout.py). ``holdout_group`` is the group
rule (``defectlab.data.groups``): ``auto`` (default) groups near-duplicate images by their pixels, a regex
(``'regex:^(part[0-9]+)_'``) names the part from the file name, ``none`` holds out single images. The
threshold is set for a target false-alarm rate (``false_alarm``, default 1%) and the run reports the rate to
expect on new parts with an interval (``defectlab.anomaly.threshold``). The ``test`` split is evaluated;
pixel metrics compare maps mapped back to the original image size with the original masks (letterbox
padding never counts).

Defaults and why: ``resize="auto"``, ``image_size=256``. ``auto`` is the method's own choice. PatchCore
takes ``native``: every image is scaled by ONE factor (the median training image's longer side becomes 256
px), so aspect ratio and physical pixel size are kept, nothing is padded or stretched, and a patch covers
the same area of the part in every image (one camera); images of one size are batched together. The
fixed-grid methods (PaDiM, knn, deep_svdd, ocsvm) and the autoencoder (native not measured) take
``letterbox`` (aspect ratio kept, zero padding to one square size). On magnetic_tile (crops 103-617 px
wide), native against letterbox, both 256: better localisation on both splits (pixel AUROC +0.015 /
+0.008, AUPRO +0.019 / +0.011, folders / by tile), image AUROC -0.001 / -0.011, and 1.4x faster inference
(smaller inputs, no padding); docs/anomaly.md. On datasets of one square size (MVTec AD) native, letterbox
and squash are the same. 256 px is the usual PatchCore resolution and keeps CPU inference fast.
``standardize=True``: each image's intensities are brought to one mean and spread before anything else
(``defectlab.data.transforms.standardize_intensity``), because exposure and gain drift between shots of one
product while the model should judge texture and shape; kept after seeing its effect on magnetic_tile's
test labels: image AUROC +0.01-0.02, pixel AUROC +0.01 (docs/anomaly.md).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from defectlab.anomaly import build_model
from defectlab.anomaly.base import AnomalyModel, AnomalyOutput
from defectlab.anomaly.detector import Detector, Preprocess, Thresholds, same_size_runs
from defectlab.anomaly.geometry import map_to_original
from defectlab.anomaly.threshold import deployable_threshold
from defectlab.data.dataset import DefectDataset
from defectlab.data.index import GOOD, DatasetIndex, SampleRecord, open_dataset
from defectlab.data.io import load_mask, read_info
from defectlab.data.transforms import as_hw
from defectlab.devices import inference_autocast, resolve_device
from defectlab.errors import BadInputError, ConfigError
from defectlab.metrics import anomaly_metrics, auroc, threshold_from_good
from defectlab.metrics.streaming import PixelHistogram

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    data: str = ""  # dataset folder: an MVTec category, a folder layout with splits, or manifests
    model: str = "patchcore"  # a name in defectlab.anomaly.ANOMALY_MODELS
    options: dict[str, Any] = field(default_factory=dict)  # the method's own Config (backbone, weights, ...)
    image_size: int | tuple[int, int] = 256  # model input (H, W); an int means square ("native": see there)
    resize: str = "auto"  # auto (the method's own) | native (one scale factor, sizes vary) | letterbox | squash | crop
    standardize: bool = True  # per-image intensity standardisation (exposure/gain differences between shots)
    holdout: float = 0.1  # fraction of train/good kept aside for the deployable threshold
    holdout_group: str = "auto"  # group rule (defectlab.data.groups): auto | none | regex:PATTERN
    false_alarm: float = 0.01  # target false-alarm rate on good parts (threshold: the 1 - this quantile)
    quantile: float | None = None  # old knob: if set, false_alarm = 1 - quantile
    batch_size: int = 16
    num_workers: int = 0
    seed: int = 0  # hold-out split
    overlays: int = 24  # test images drawn as heatmap overlays in the run folder


def batch_indices(records: Sequence[SampleRecord], preprocess: Preprocess, batch_size: int) -> list[list[int]]:
    """The batches (record indices, in order) the model sees: ``batch_size`` consecutive records, cut where
    the input size changes under ``native`` resize (a batch holds images of one size)."""
    if preprocess.variable_size:
        return same_size_runs([_size(r) for r in records], batch_size)
    return [list(range(i, min(i + batch_size, len(records)))) for i in range(0, len(records), batch_size)]


def image_loader(records: Sequence[SampleRecord], preprocess: Preprocess, cfg: RunConfig) -> DataLoader:
    """Batches of ``records`` as the model sees them (``cfg.batch_size``, ``cfg.num_workers``)."""
    dataset = DefectDataset(records, preprocess.transform(), mode=preprocess.mode)
    return DataLoader(dataset, batch_sampler=batch_indices(records, preprocess, cfg.batch_size),
                      num_workers=cfg.num_workers)


def _size(record: SampleRecord) -> tuple[int, int]:
    info = read_info(record.path)
    return info.width, info.height


def resolve_resize(resize: str, model: AnomalyModel) -> str:
    """``auto`` -> the method's own default; check the mode against the method (fixed-grid methods cannot
    take ``native``)."""
    resize = model.default_resize if resize == "auto" else resize
    if resize == "native" and model.fixed_input:
        raise ConfigError(f"{model.name} needs one input size for all images: use --resize letterbox, squash or crop")
    if resize not in ("native", "squash", "letterbox", "crop"):
        raise ConfigError(f"unknown resize mode '{resize}'; known: auto, native, letterbox, squash, crop")
    return resize


def native_scale(records: Sequence[SampleRecord], image_size: int | tuple[int, int]) -> float:
    """The one scale factor of ``resize="native"``: the median training image's longer side becomes
    ``max(image_size)`` (read from image headers only)."""
    sides = sorted(max(_size(r)) for r in records)
    return max(as_hw(image_size)) / float(sides[len(sides) // 2])


@dataclass
class HoldOut:
    """The good training images split into those fitted on and those that set the thresholds."""

    fit: list[SampleRecord]
    held: list[SampleRecord]
    groups: list[str]  # the part (group key) of each held-out image
    how: str  # one line for the run's report


def holdout_split(index: DatasetIndex, cfg: RunConfig) -> HoldOut:
    """Hold out whole groups of ``holdout_group`` (default ``auto``: near-duplicate shots of one part,
    ``defectlab.data.groups``) until ``holdout`` of train/good is reached, skipping groups that would
    overshoot it by more than a quarter (many small groups give a steadier threshold than one big one).
    A ``val`` split's good images are used instead when present."""
    from defectlab.data.groups import group_indices, group_keys

    good = index.select(split="train", defect_types=[GOOD])
    if not good:
        raise BadInputError(index.root, "no good training images (expected train/good/ or a train manifest; "
                                        "for a folder layout run 'defectlab data split' first)")
    rule = (cfg.holdout_group or "none").strip()
    val = index.select(split="val", defect_types=[GOOD])
    if val:
        return HoldOut(good, val, group_keys([r.path for r in val], rule),
                       f"the val split's {len(val)} good images (groups: {rule})")
    if not 0 <= cfg.holdout < 1:
        raise ConfigError(f"holdout must be in [0, 1), got {cfg.holdout}")
    n_hold = int(round(cfg.holdout * len(good)))
    if n_hold == 0 or len(good) - n_hold < 1:
        return HoldOut(good, [], [], "no hold-out")
    keys = group_keys([r.path for r in good], rule)
    groups = group_indices(keys)
    fallback = ""
    biggest = max(map(len, groups))
    if rule == "auto" and biggest > len(good) / 2:  # the images all look alike: no parts to tell apart
        fallback = (f"; the auto rule put {biggest} of {len(good)} images in one group (they look "
                    "alike), so single images were held out (name parts with --holdout-group regex:...)")
        log.warning("holdout: %s", fallback[2:])
        keys = [str(r.path) for r in good]
        groups = group_indices(keys)
    if len(groups) == 1:
        raise ConfigError(f"holdout_group '{rule}' finds one part only: nothing would be left to fit on")
    random.Random(cfg.seed).shuffle(groups)
    hold: list[int] = []
    for members in groups:  # whole parts, until at least n_hold images
        if len(hold) >= n_hold:
            break
        if hold and len(hold) + len(members) > 1.25 * n_hold:
            continue
        hold += members
    if len(hold) >= len(good):
        raise ConfigError(f"holdout_group '{rule}' finds one part only: nothing would be left to fit on")
    held_set = set(hold)
    kind = {"none": "single images (no groups: shots of one part may sit on both sides, an optimistic "
                    "threshold)",
            "auto": "near-duplicate groups found automatically (rule auto: standardised thumbnails, "
                    "average linkage)"}.get(rule, f"groups named by the rule '{rule}'")
    n_held_groups = len({keys[i] for i in hold})
    how = (f"{len(hold)} of {len(good)} train/good images held out as {n_held_groups} whole groups of "
           f"{len(groups)}: {kind}{fallback}")
    return HoldOut([r for i, r in enumerate(good) if i not in held_set], [good[i] for i in sorted(held_set)],
                   [keys[i] for i in sorted(held_set)], how)


def split_train(index: DatasetIndex, cfg: RunConfig) -> tuple[list[SampleRecord], list[SampleRecord]]:
    """(records to fit on, held-out good records for the thresholds): ``holdout_split`` without the groups."""
    split = holdout_split(index, cfg)
    return split.fit, split.held


def target_false_alarm(cfg: RunConfig) -> float:
    rate = 1.0 - cfg.quantile if cfg.quantile is not None else cfg.false_alarm
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"false_alarm must be in [0, 1) (quantile in (0, 1]), got {rate:.4g}")
    return rate


def fit_detector(cfg: RunConfig, index: DatasetIndex | None = None, *, device: str = "auto",
                 executor: str = "local", address: str | None = None, workers: int | None = None) -> Detector:
    """Fit on the good training images and set the thresholds; ``device`` (``auto | cpu | cuda[:N] |
    mps``) is where the model fits (backbone, coreset, memory bank); the detector stays there.
    ``executor="ray"``: PatchCore's feature extraction runs on a Ray actor pool (``address``: a cluster to
    join, else a local Ray; ``workers`` actors), streamed into the same coreset selection here
    (``defectlab.anomaly.ray_features``): the same bank as ``local``."""
    from defectlab.inspect.executors import check_executor

    dev = resolve_device(device, what="--device")
    check_executor(executor)
    index = index or open_dataset(cfg.data)
    rate = target_false_alarm(cfg)
    split = holdout_split(index, cfg)
    fit_recs, hold_recs = split.fit, split.held
    model = build_model(cfg.model, cfg.options).to(dev)
    resize = resolve_resize(cfg.resize, model)
    scale = native_scale(fit_recs, cfg.image_size) if resize == "native" else 1.0
    preprocess = Preprocess(as_hw(cfg.image_size), resize, tuple(model.mean), tuple(model.std), scale=scale,
                            standardize=cfg.standardize)
    preprocess.transform()  # validates the resize mode before the long part
    t0 = time.perf_counter()
    if executor == "ray":
        from defectlab.anomaly.ray_features import ray_patch_features

        if not hasattr(model, "fit_features"):
            raise ConfigError(f"--executor ray runs PatchCore's feature extraction; {cfg.model} fits locally")
        model.fit_features(ray_patch_features(model, fit_recs, preprocess, cfg.batch_size, address=address,
                                              workers=workers))
    else:
        model.fit(image_loader(fit_recs, preprocess, cfg))
    fit_s = time.perf_counter() - t0
    det = Detector(model, cfg.model, preprocess, Thresholds(0.0, 0.0, "unset"))
    scored = hold_recs if hold_recs else fit_recs
    scores, map_max = [], []
    for batch in image_loader(scored, preprocess, cfg):
        out = model.predict(batch.image)
        scores += out.scores.tolist()
        map_max += out.maps.flatten(1).max(1).values.tolist()
    if len(hold_recs) < 10:
        log.warning("only %d good images set the deployable threshold: expect it to be rough", len(scored))
    source = split.how if hold_recs else \
        f"the {len(fit_recs)} training images themselves (no hold-out: optimistic, expect more false alarms)"
    est = deployable_threshold(scores, split.groups if hold_recs else None, rate, seed=cfg.seed)
    lo, hi = est.interval
    det.thresholds = Thresholds(
        est.threshold, threshold_from_good(map_max, 1.0 - rate),
        f"quantile {1 - rate:.4g} of the scores (pixel: map maxima) of {source}; target false-alarm rate "
        f"{rate:.3g}, expected {est.expected:.3f} (90% interval {lo:.3f}-{hi:.3f}, group bootstrap over "
        f"{est.n_groups} held-out groups)",
        false_alarm=rate, expected_false_alarm=round(est.expected, 4),
        false_alarm_interval=[round(lo, 4), round(hi, 4)],
        holdout=split.how)
    det.training = {"data": str(index.root), "dataset": index.name, "layout": index.layout,
                    "weights": model.summary().get("backbone_weights", "trained from scratch"),
                    "n_fit": len(fit_recs), "n_threshold": len(scored), "fit_seconds": round(fit_s, 2),
                    "holdout": split.how, "n_threshold_groups": est.n_groups,
                    "good_scores": {"min": float(np.min(scores)), "median": float(np.median(scores)),
                                    "max": float(np.max(scores))}}
    return det


def place(det: Detector, device: str = "auto") -> torch.device:
    """Move a loaded detector's model to ``device`` (inputs follow it in ``predict``); returns the device."""
    dev = resolve_device(device, what="--device")
    det.model.to(dev)
    return dev


@dataclass
class EvalResult:
    metrics: dict[str, Any]  # "all" and one entry per defect type (each vs. the good test images)
    rows: list[dict[str, Any]]  # per image: path, defect_type, label, score, predicted defect
    maps: dict[int, np.ndarray]  # row index -> map at original size (only for ``keep`` rows)
    masks: dict[int, np.ndarray]
    ms_per_image: float


def evaluate(det: Detector, records: Sequence[SampleRecord], *, batch_size: int = 16,
             keep: set[int] | None = None, half: bool = False) -> EvalResult:
    """Score ``records``; metrics need both good and defective images (pixel ones need masks).
    ``half``: the forward pass in half precision (``defectlab.devices.inference_autocast``: bfloat16 on the
    CPU, float16 on a GPU) on the model's device; scores and maps come back as float32.

    Streams: each map is brought to its image's original size, binned into the pixel-metric histograms
    (``defectlab.metrics.streaming``, one group per defect type) and dropped, unless it is one of ``keep``
    (overlays); memory does not grow with the number of test images beyond one row per image."""
    keep = keep or set()
    rows: list[dict[str, Any]] = []
    kept_maps: dict[int, np.ndarray] = {}
    kept_masks: dict[int, np.ndarray] = {}
    medians: list[float] = []  # per image: median map score outside the ground truth (background_auroc)
    pixels = PixelHistogram()
    pred_s = 0.0
    cfg = RunConfig(batch_size=batch_size)
    with_masks = any(r.mask_path is not None for r in records if r.label == 1)
    loader = image_loader(records, det.preprocess, cfg)
    from tqdm.auto import tqdm

    for batch in tqdm(loader, desc="test", unit="batch", leave=False, disable=None):
        t0 = time.perf_counter()
        with inference_autocast(det.model.device, half):
            out = det.predict_tensor(batch.image)
        if half:
            out = AnomalyOutput(out.scores.float(), out.maps.float())
        pred_s += time.perf_counter() - t0
        for i, path in enumerate(batch.path):
            rec = records[len(rows)]
            info = read_info(path)
            hw = (info.height, info.width)
            full = map_to_original(out.maps[i], hw, det.preprocess.resize)
            mask = load_mask(rec.mask_path, size=(info.width, info.height)) if rec.mask_path else np.zeros(hw, bool)
            score = float(out.scores[i])
            if len(rows) in keep:
                kept_maps[len(rows)], kept_masks[len(rows)] = full, mask
            rows.append({"path": str(path), "defect_type": rec.defect_type, "label": rec.label, "score": score,
                         "predicted_defect": int(score > det.thresholds.image)})
            if with_masks:
                pixels.add(mask, full, rec.defect_type)
                medians.append(float(np.median(full[~mask])) if (~mask).any() else float("nan"))
    metrics = _metrics(rows, pixels if with_masks else None, np.array(medians))
    return EvalResult(metrics, rows, kept_maps, kept_masks, 1000 * pred_s / max(1, len(rows)))


def _metrics(rows: list[dict[str, Any]], pixels: PixelHistogram | None, medians: np.ndarray) -> dict[str, Any]:
    labels = np.array([r["label"] for r in rows])
    scores = np.array([r["score"] for r in rows])
    types = [r["defect_type"] for r in rows]
    out: dict[str, Any] = {}
    if labels.min() == labels.max():
        return {"all": {"n_images": len(rows), "note": "one class only: no AUROC"}}
    groups = {"all": (list(range(len(rows))), None)}
    for d in sorted(set(types) - {GOOD}):
        groups[d] = ([i for i, t in enumerate(types) if t in (d, GOOD)], [d, GOOD])
    for name, (sel, kinds) in groups.items():
        if labels[sel].min() == labels[sel].max():
            continue
        m = anomaly_metrics(labels[sel], scores[sel])
        if pixels is not None:
            m.update(pixels.metrics(kinds))
            k = [i for i in sel if not np.isnan(medians[i])]
            bg = auroc(labels[k], medians[k]) if len(set(labels[k].tolist())) == 2 else None
            m["background_auroc"] = bg
        pred = np.array([rows[i]["predicted_defect"] for i in sel])
        m["deployable_recall"] = float(pred[labels[sel] == 1].mean())
        m["deployable_false_alarm_rate"] = float(pred[labels[sel] == 0].mean()) if (labels[sel] == 0).any() else None
        m["n_images"] = len(sel)
        m["n_defect"] = int(labels[sel].sum())
        out[name] = m
    return out


def evaluation_records(index: DatasetIndex) -> list[SampleRecord]:
    recs = index.select(split="test")
    if not recs:
        raise BadInputError(index.root, "no test images (expected test/<defect>/ folders or a test manifest)")
    return recs
