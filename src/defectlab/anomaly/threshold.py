"""The deployable threshold from held-out good images, and the false-alarm rate to expect from it.

    >>> est = deployable_threshold(scores, groups, false_alarm=0.01)
    >>> est.threshold, est.expected, est.interval   # flag score > threshold; ~expected of good parts flagged

``threshold`` is the ``1 - false_alarm`` quantile of the held-out good scores (``threshold_from_good``).
Its false-alarm rate on *new* good parts is estimated out of sample with a group bootstrap: the held-out
groups (parts) are resampled with replacement, the threshold is recomputed from the resample, and the
groups left out of the resample are scored against it. ``expected`` is the pooled rate over all
replicates, ``interval`` the 5th-95th percentile of the per-replicate rates: how far the rate of a
threshold drawn from this many parts may stray. Whole groups are resampled because shots of one part
are not independent. The estimate is slightly pessimistic (a resample holds ~63% of the parts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from defectlab.metrics import threshold_from_good


@dataclass
class FalseAlarmEstimate:
    threshold: float
    target: float  # the false-alarm rate asked for
    expected: float  # estimated rate on new good parts (group bootstrap, out of bag)
    interval: tuple[float, float]  # 5th-95th percentile of the per-replicate rates
    n_images: int
    n_groups: int


def deployable_threshold(scores: Sequence[float], groups: Sequence[str | int] | None, false_alarm: float, *,
                         n_boot: int = 1000, seed: int = 0) -> FalseAlarmEstimate:
    """Threshold at the ``1 - false_alarm`` quantile of ``scores`` plus its out-of-sample false-alarm
    rate (see the module docstring); ``groups``: one part key per score (None: every score its own)."""
    s = np.asarray(scores, dtype=np.float64)
    threshold = threshold_from_good(s, 1.0 - false_alarm)
    keys = list(range(len(s))) if groups is None else list(groups)
    _, member = np.unique(np.asarray([str(k) for k in keys]), return_inverse=True)
    n_groups = int(member.max()) + 1 if len(s) else 0
    if n_groups < 2:
        rate = float(np.mean(s > threshold))
        return FalseAlarmEstimate(threshold, false_alarm, rate, (rate, rate), len(s), n_groups)
    rng = np.random.default_rng(seed)
    order = np.argsort(member, kind="stable")
    bounds = np.searchsorted(member[order], np.arange(n_groups + 1))
    by_group = [s[order[bounds[g]:bounds[g + 1]]] for g in range(n_groups)]
    rates, flagged, seen = [], 0, 0
    for _ in range(n_boot):
        draw = rng.integers(0, n_groups, n_groups)
        out = np.setdiff1d(np.arange(n_groups), draw)
        if out.size == 0:
            continue
        t = float(np.quantile(np.concatenate([by_group[g] for g in draw]), 1.0 - false_alarm))
        left = np.concatenate([by_group[g] for g in out])
        k = int((left > t).sum())
        rates.append(k / left.size)
        flagged, seen = flagged + k, seen + left.size
    lo, hi = np.percentile(rates, [5, 95]) if rates else (np.nan, np.nan)
    return FalseAlarmEstimate(threshold, false_alarm, flagged / max(1, seen), (float(lo), float(hi)), len(s),
                              n_groups)


__all__ = ["FalseAlarmEstimate", "deployable_threshold"]
