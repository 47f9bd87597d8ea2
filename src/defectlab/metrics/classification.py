"""Multi-class classification metrics for defect-type classifiers.

Conventions: ``y_true`` / ``y_pred`` are 1-D label arrays (ints or strings, numpy/torch/lists). Unless
``labels`` is given, the classes are the sorted union of the labels seen in ``y_true`` and ``y_pred``
(scikit-learn's ``unique_labels``). A ratio whose denominator is zero (precision of a class never
predicted, recall of a class absent from ``y_true``) is 0.0, as scikit-learn's ``zero_division`` default.
Confusion matrices have true classes as rows and predicted classes as columns.

Many/medium/few-shot groups (long-tail literature, Liu et al. 2019): a class is *many-shot* with more
than ``many`` (100) training images, *few-shot* with fewer than ``few`` (20), *medium* otherwise;
the group accuracy is over the test samples whose true class is in the group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from defectlab.metrics._common import MetricInputError, to_numpy

__all__ = [
    "accuracy",
    "balanced_accuracy",
    "confusion_matrix",
    "per_class_precision_recall",
    "macro_f1",
    "never_predicted",
    "shot_groups",
    "shot_accuracy",
    "classification_metrics",
]


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = to_numpy(y_true).reshape(-1)
    p = to_numpy(y_pred).reshape(-1)
    if t.shape != p.shape:
        raise MetricInputError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    if t.size == 0:
        raise MetricInputError("no predictions given")
    return t, p


def _labels(t: np.ndarray, p: np.ndarray, labels: Sequence[Any] | None) -> np.ndarray:
    if labels is None:
        return np.union1d(t, p)
    lab = np.asarray(list(labels))
    if lab.size == 0 or np.unique(lab).size != lab.size:
        raise MetricInputError("labels must be a non-empty list of distinct classes")
    return lab


def confusion_matrix(y_true: Any, y_pred: Any, labels: Sequence[Any] | None = None) -> np.ndarray:
    """(K, K) int64 counts, row = true class, column = predicted class, in the order of ``labels``.

    Samples whose true or predicted label is not in ``labels`` are left out (as scikit-learn does).
    """
    t, p = _pair(y_true, y_pred)
    lab = _labels(t, p, labels)
    order = np.argsort(lab, kind="stable")
    sorted_lab = lab[order]

    def index_of(y: np.ndarray) -> np.ndarray:
        pos = np.clip(np.searchsorted(sorted_lab, y), 0, lab.size - 1)
        found = sorted_lab[pos] == y
        return np.where(found, order[pos], -1)

    ti, pi = index_of(t), index_of(p)
    keep = (ti >= 0) & (pi >= 0)
    k = lab.size
    return np.bincount(ti[keep] * k + pi[keep], minlength=k * k).reshape(k, k).astype(np.int64)


def accuracy(y_true: Any, y_pred: Any) -> float:
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p))


def per_class_precision_recall(
    y_true: Any, y_pred: Any, labels: Sequence[Any] | None = None
) -> dict[str, np.ndarray]:
    """Per class: ``labels``, ``precision``, ``recall``, ``f1`` and ``support`` (true count) arrays."""
    t, p = _pair(y_true, y_pred)
    lab = _labels(t, p, labels)
    cm = confusion_matrix(t, p, lab)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = predicted + support  # 2TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"labels": lab, "precision": precision, "recall": recall, "f1": f1, "support": support}


def macro_f1(y_true: Any, y_pred: Any, labels: Sequence[Any] | None = None) -> float:
    """Unweighted mean of per-class F1 (``f1_score(average='macro')``)."""
    return float(np.mean(per_class_precision_recall(y_true, y_pred, labels)["f1"]))


def balanced_accuracy(y_true: Any, y_pred: Any) -> float:
    """Mean recall over the classes present in ``y_true`` (``balanced_accuracy_score``)."""
    t, p = _pair(y_true, y_pred)
    rep = per_class_precision_recall(t, p)
    present = rep["support"] > 0
    return float(np.mean(rep["recall"][present]))


def never_predicted(y_true: Any, y_pred: Any, labels: Sequence[Any] | None = None) -> list[Any]:
    """Classes (default: those present in ``y_true``) that the model never predicted."""
    t, p = _pair(y_true, y_pred)
    lab = np.unique(t) if labels is None else _labels(t, p, labels)
    missing = lab[~np.isin(lab, p)]
    return [x.item() if hasattr(x, "item") else x for x in missing]


def _count_map(train_counts: Mapping[Any, int] | Sequence[int]) -> dict[Any, int]:
    if isinstance(train_counts, Mapping):
        counts = dict(train_counts)
    else:
        counts = {i: int(c) for i, c in enumerate(to_numpy(train_counts).reshape(-1).tolist())}
    if any(int(c) < 0 for c in counts.values()):
        raise MetricInputError("training-set class counts must be >= 0")
    return counts


def shot_groups(
    train_counts: Mapping[Any, int] | Sequence[int], *, many: int = 100, few: int = 20
) -> dict[str, list[Any]]:
    """Classes per group: ``many`` (> many images), ``medium`` (few..many), ``few`` (< few)."""
    if few > many:
        raise MetricInputError(f"few-shot threshold ({few}) must not exceed many-shot threshold ({many})")
    groups: dict[str, list[Any]] = {"many": [], "medium": [], "few": []}
    for cls, n in _count_map(train_counts).items():
        group = "many" if n > many else "few" if n < few else "medium"
        groups[group].append(cls)
    return groups


def shot_accuracy(
    y_true: Any,
    y_pred: Any,
    train_counts: Mapping[Any, int] | Sequence[int],
    *,
    many: int = 100,
    few: int = 20,
) -> dict[str, float | None]:
    """Accuracy over test samples of many-, medium- and few-shot classes (``None`` for an empty group).

    ``train_counts`` maps class label -> number of training images (a list is indexed by class id).
    A test label missing from ``train_counts`` is an error (its group is unknown).
    """
    t, p = _pair(y_true, y_pred)
    groups = shot_groups(train_counts, many=many, few=few)
    known = np.asarray([c for g in groups.values() for c in g])
    unknown = np.setdiff1d(np.unique(t), known) if known.size else np.unique(t)
    if unknown.size:
        raise MetricInputError(f"no training count for test class(es) {unknown.tolist()}")
    out: dict[str, float | None] = {}
    for name, classes in groups.items():
        sel = np.isin(t, np.asarray(classes)) if classes else np.zeros(t.shape, dtype=bool)
        out[name] = float(np.mean(t[sel] == p[sel])) if sel.any() else None
    return out


def classification_metrics(
    y_true: Any,
    y_pred: Any,
    labels: Sequence[Any] | None = None,
    train_counts: Mapping[Any, int] | Sequence[int] | None = None,
) -> dict[str, Any]:
    """A JSON-friendly summary: accuracy, balanced accuracy, macro-F1, per-class table, confusion matrix."""
    rep = per_class_precision_recall(y_true, y_pred, labels)
    lab = rep["labels"]
    out: dict[str, Any] = {
        "accuracy": accuracy(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "macro_f1": float(np.mean(rep["f1"])),
        "labels": lab.tolist(),
        "per_class": {
            str(c): {k: rep[k][i].item() for k in ("precision", "recall", "f1", "support")}
            for i, c in enumerate(lab.tolist())
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, lab).tolist(),
        "never_predicted": never_predicted(y_true, y_pred, labels),
    }
    if train_counts is not None:
        out["shot_accuracy"] = shot_accuracy(y_true, y_pred, train_counts)
    return out
