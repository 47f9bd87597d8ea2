"""Metrics as pure functions (numpy arrays or torch tensors in, floats out), checked against scikit-learn.

* :mod:`~defectlab.metrics.anomaly`: image/pixel AUROC, AUPRO (MVTec AD definition), AP, F1-max,
  ``threshold_from_good``.
* :mod:`~defectlab.metrics.classification`: accuracy, balanced accuracy, macro-F1, per-class
  precision/recall, confusion matrix, never-predicted classes, many/medium/few-shot accuracy.
* :mod:`~defectlab.metrics.segmentation`: IoU and Dice, binary and per class.

Inputs a metric is undefined on (one class only, mismatched shapes, NaN scores) raise
:class:`MetricInputError` (a ``DefectLabError`` and a ``ValueError``).
"""

from defectlab.metrics._common import MetricInputError
from defectlab.metrics.anomaly import (
    anomaly_metrics,
    aupro,
    auroc,
    average_precision,
    background_auroc,
    f1_max,
    image_auroc,
    pixel_auroc,
    pro_curve,
    threshold_from_good,
)
from defectlab.metrics.classification import (
    accuracy,
    balanced_accuracy,
    classification_metrics,
    confusion_matrix,
    macro_f1,
    never_predicted,
    per_class_precision_recall,
    shot_accuracy,
    shot_groups,
)
from defectlab.metrics.segmentation import (
    binary_dice,
    binary_iou,
    mean_dice,
    mean_iou,
    per_class_dice,
    per_class_iou,
)

__all__ = [
    "MetricInputError",
    "anomaly_metrics",
    "aupro",
    "auroc",
    "average_precision",
    "background_auroc",
    "f1_max",
    "image_auroc",
    "pixel_auroc",
    "pro_curve",
    "threshold_from_good",
    "accuracy",
    "balanced_accuracy",
    "classification_metrics",
    "confusion_matrix",
    "macro_f1",
    "never_predicted",
    "per_class_precision_recall",
    "shot_accuracy",
    "shot_groups",
    "binary_dice",
    "binary_iou",
    "mean_dice",
    "mean_iou",
    "per_class_dice",
    "per_class_iou",
]
