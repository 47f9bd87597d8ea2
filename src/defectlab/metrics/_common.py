"""Input checks shared by the metric modules: arrays in (numpy or torch), clear errors out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from defectlab.errors import DefectLabError


class MetricInputError(DefectLabError, ValueError):
    """Inputs a metric cannot be computed on (one class only, shape mismatch, NaN scores, ...)."""


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view/copy of a numpy array, torch tensor (any device) or nested sequence."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def flat_pair(
    y_true: Any, y_score: Any, *, what: str = "scores"
) -> tuple[np.ndarray, np.ndarray]:
    """(bool labels, float scores) as matching 1-D arrays; accepts lists of differently sized arrays."""
    t = _concat_flat(y_true)
    s = _concat_flat(y_score)
    if t.shape != s.shape:
        raise MetricInputError(f"labels and {what} differ in size: {t.size} vs {s.size}")
    if t.size == 0:
        raise MetricInputError(f"no {what} given")
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    if not np.all(np.isfinite(s)):
        raise MetricInputError(f"{what} contain NaN or infinite values")
    return as_bool_labels(t), s


def _concat_flat(x: Any) -> np.ndarray:
    if isinstance(x, Sequence) and not isinstance(x, (str, bytes)) and len(x) and np.ndim(to_numpy(x[0])) >= 1:
        return np.concatenate([to_numpy(a).reshape(-1) for a in x])
    return to_numpy(x).reshape(-1)


def as_bool_labels(t: np.ndarray) -> np.ndarray:
    """Binary labels (bool, or numbers that are all 0/1) as a bool array; anything else is refused."""
    if t.dtype == np.bool_:
        return t
    if not np.issubdtype(t.dtype, np.number):
        raise MetricInputError(f"binary labels must be bool or 0/1 numbers, got dtype {t.dtype}")
    bad = ~np.isin(t, (0, 1))
    if bad.any():
        raise MetricInputError(f"binary labels must be 0 or 1, found {t[bad][0]!r}")
    return t.astype(bool)


def require_both_classes(labels: np.ndarray, what: str) -> tuple[int, int]:
    """(n_positive, n_negative); a clear error when either is zero (the metric is undefined then)."""
    n_pos = int(np.count_nonzero(labels))
    n_neg = int(labels.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        present = "anomalous/positive" if n_pos else "good/negative"
        raise MetricInputError(
            f"{what} needs both good and anomalous samples, but only {present} ones were given "
            f"({labels.size} in all)"
        )
    return n_pos, n_neg
