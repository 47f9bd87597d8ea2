"""Anomaly detection from good images only: one registry, one interface (``base.AnomalyModel``).

    >>> from defectlab.anomaly import ANOMALY_MODELS, build_model
    >>> model = build_model("patchcore", {"coreset_ratio": 0.01})   # options checked against its Config
    >>> model.fit(train_loader)                                     # batches of Samples or image tensors
    >>> out = model.predict(images)                                 # AnomalyOutput(scores (B,), maps (B,H,W))

Higher = more anomalous. A deployable ``Detector`` (model + preprocessing + thresholds, saved as
safetensors + JSON) is in ``defectlab.anomaly.detector``; ``fit_detector`` / ``evaluate`` in
``defectlab.anomaly.runner``.
"""

from __future__ import annotations

from typing import Any

from defectlab.anomaly import autoencoder, knn, ocsvm, padim, patchcore, svdd  # noqa: F401  (registration)
from defectlab.anomaly.base import AnomalyModel, AnomalyOutput, Prediction
from defectlab.anomaly.registry import ANOMALY_MODELS
from defectlab.config import from_dict

__all__ = ["ANOMALY_MODELS", "AnomalyModel", "AnomalyOutput", "Prediction", "build_model"]


def build_model(name: str, options: dict[str, Any] | None = None, *, pretrained: bool = True) -> AnomalyModel:
    """An unfitted model of a registered method; unknown names and options are ConfigErrors."""
    cls = ANOMALY_MODELS.get(name)
    config = from_dict(cls.Config, options or {}, where=name)
    return cls(config, pretrained=pretrained)
