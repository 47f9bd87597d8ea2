"""The decision rule of an inspection bundle: one verdict per part from the raw scores.

Stated once (``VerdictRule``, defaults in brackets):

1. **Gate.** The part is ``defect`` when the good-only detector's image score exceeds its deployable
   threshold (``anomaly_score > anomaly_threshold``) or, with a few-shot head, when the refined map's
   maximum exceeds the refined threshold (``refined_score > refined_threshold``); both thresholds are a
   quantile of held-out *good* images only. Otherwise ``ok``.
2. **Regions.** The 8-connected regions of the refined map (the detector map without a head) above its
   threshold, largest first; each with a box, a mask and a score (the map's maximum inside). A defect
   verdict from the detector gate alone with no region above the refined threshold gets the region of the
   detector map above the detector's pixel threshold.
3. **Type.** Per region, the type probabilities of the head (averaged over the region, weighted by the
   refined map) and/or the classifier's probabilities (defect types only, renormalised), averaged when
   both exist: a region-guided classifier (``region_probs``) classifies each region (its box and mask),
   a whole-image classifier gives the same image-level probabilities to every region. The part's type is
   the largest region's. ``unknown`` when the best type's
   probability is below ``min_type_probability`` [0.5] (uncertain between types, or unlike all of them:
   the head's type probabilities mix its softmax with the similarity to each type's labelled examples,
   which spreads out on a defect unlike any labelled type), or when there is no type source at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from defectlab.data.regions import EIGHT  # one region = one 8-connected component, as everywhere

OK, DEFECT, UNKNOWN = "ok", "defect", "unknown"


@dataclass
class VerdictRule:
    min_type_probability: float = 0.5  # below this the type is "unknown"
    top: int = 3  # type probabilities reported
    max_regions: int = 10  # regions reported (largest first)


@dataclass
class Region:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)
    score: float  # the map's maximum inside the region
    area: int  # pixels
    type: str
    probabilities: dict[str, float] = field(default_factory=dict)
    mask: np.ndarray | None = None  # (y1 - y0, x1 - x0) bool, the region inside its box

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["box"] = [int(v) for v in self.box]
        d["mask"] = rle(self.mask) if self.mask is not None else None
        return d


@dataclass
class Verdict:
    verdict: str  # ok | defect
    type: str | None  # a defect type, "unknown", or None when ok
    probabilities: dict[str, float]  # top-k type probabilities (empty when ok or no type source)
    regions: list[Region]
    scores: dict[str, float]  # the raw scores and thresholds behind the decision

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "type": self.type,
            "probabilities": self.probabilities,
            "regions": [r.to_json() for r in self.regions],
            "scores": self.scores,
        }


def rle(mask: np.ndarray) -> dict[str, Any]:
    """Row-major run-length encoding of a bool mask: {size: [h, w], counts: [zeros, ones, zeros, ...]}."""
    flat = np.asarray(mask, dtype=bool).ravel()
    change = np.flatnonzero(np.diff(np.concatenate([[False], flat, [False]]).astype(np.int8)))
    counts, prev = [], 0
    for c in change:
        counts.append(int(c - prev))
        prev = int(c)
    if prev < flat.size:
        counts.append(int(flat.size - prev))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _top(probs: dict[str, float], k: int) -> dict[str, float]:
    return {c: round(float(p), 6) for c, p in sorted(probs.items(), key=lambda kv: -kv[1])[:k]}


def _regions(amap: np.ndarray, threshold: float, limit: int) -> list[tuple[tuple, np.ndarray]]:
    labels, n = ndimage.label(amap > threshold, structure=EIGHT)
    if n == 0:
        return []
    sizes = ndimage.sum_labels(np.ones_like(amap), labels, index=np.arange(1, n + 1))
    slices = ndimage.find_objects(labels)
    out = []
    for i in np.argsort(-sizes, kind="stable")[:limit]:
        sl = slices[i]
        out.append((sl, labels[sl] == i + 1))
    return out


def _type_probs(probs: dict[str, float] | None, classes: list[str]) -> dict[str, float] | None:
    """A classifier's probabilities over the defect types only (``classes``; all when empty), renormalised."""
    if not probs:
        return None
    sub = {c: float(probs.get(c, 0.0)) for c in classes} if classes else dict(probs)
    total = sum(sub.values())
    return {c: p / total for c, p in sub.items()} if total > 0 else None


# regions of one image, as ((x0, y0, x1, y1) box, mask inside the box) pairs -> {type: p} per region
RegionProbs = Callable[[list[tuple[tuple[int, int, int, int], np.ndarray]]], list[dict[str, float]]]


def decide(
    *,
    anomaly_score: float,
    anomaly_threshold: float,
    anomaly_map: np.ndarray,
    pixel_threshold: float,
    refined_map: np.ndarray | None = None,
    refined_threshold: float | None = None,
    type_maps: np.ndarray | None = None,
    classes: list[str] | None = None,
    classifier_probs: dict[str, float] | None = None,
    region_probs: RegionProbs | None = None,
    rule: VerdictRule = VerdictRule(),
) -> Verdict:
    """Apply the rule to one image's raw outputs (maps at the image's own size; ``type_maps`` (T, H, W)).

    ``region_probs([(box, mask), ...]) -> [{type: p}, ...]``: a region-guided classifier, called once with
    every region's ``(x0, y0, x1, y1)`` box and its mask inside the box (and, when a gate fired without any
    region, with the whole image); it takes the place of the image-level ``classifier_probs``."""
    classes = list(classes or [])
    gate_a = anomaly_score > anomaly_threshold
    refined_score = float(refined_map.max()) if refined_map is not None else None
    gate_r = refined_map is not None and refined_score > refined_threshold  # type: ignore[operator]
    scores = {
        "anomaly_score": float(anomaly_score),
        "anomaly_threshold": float(anomaly_threshold),
        "pixel_threshold": float(pixel_threshold),
    }
    if refined_map is not None:
        scores |= {"refined_score": refined_score, "refined_threshold": float(refined_threshold)}  # type: ignore[arg-type]
    if not (gate_a or gate_r):
        return Verdict(OK, None, {}, [], scores)
    found = _regions(refined_map, refined_threshold, rule.max_regions) if gate_r else []  # type: ignore[arg-type]
    source = refined_map
    if not found:  # the detector gate alone: its own regions
        found = _regions(anomaly_map, pixel_threshold, rule.max_regions)
        source = anomaly_map
    cls_probs = _type_probs(classifier_probs, classes)
    boxes = [(sl[1].start, sl[0].start, sl[1].stop, sl[0].stop) for sl, _ in found]
    per_region = (region_probs([(b, m) for b, (_, m) in zip(boxes, found, strict=True)])
                  if region_probs is not None and found else [None] * len(found))
    regions = []
    for (sl, mask), box, rprobs in zip(found, boxes, per_region, strict=True):
        vals = source[sl][mask]  # type: ignore[index]
        if rprobs is not None:
            cls_probs = _type_probs(rprobs, classes)
        probs: dict[str, float] = {}
        if type_maps is not None:
            w = vals - vals.min() + 1e-6  # weighted towards the region's peak
            tm = type_maps[(slice(None), *sl)][:, mask]
            avg = (tm * w).sum(1) / max(float(w.sum()), 1e-12)
            probs = dict(zip(classes, avg.tolist(), strict=True))
        if cls_probs is not None:
            probs = {c: (probs[c] + cls_probs[c]) / 2 for c in probs} if probs else dict(cls_probs)
        best = max(probs, key=probs.__getitem__) if probs else UNKNOWN
        rtype = best if probs and probs[best] >= rule.min_type_probability else UNKNOWN
        regions.append(Region(box, float(vals.max()), int(mask.sum()), rtype, _top(probs, rule.top), mask))
    if not regions and region_probs is not None:  # a gate fired but no pixel passed: the whole image
        h, w = anomaly_map.shape[-2:]
        cls_probs = _type_probs(region_probs([((0, 0, w, h), np.ones((h, w), dtype=bool))])[0], classes)
    if regions:
        part_type, part_probs = regions[0].type, regions[0].probabilities
    elif cls_probs is not None:  # a gate fired but no pixel passed: the classifier's word
        best = max(cls_probs, key=cls_probs.__getitem__)
        part_type = best if cls_probs[best] >= rule.min_type_probability else UNKNOWN
        part_probs = _top(cls_probs, rule.top)
    else:
        part_type, part_probs = UNKNOWN, {}
    return Verdict(DEFECT, part_type, part_probs, regions, scores)
