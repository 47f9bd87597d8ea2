"""Deep-feature kNN (Bergman et al., "Deep Nearest Neighbor Anomaly Detection", 2020): image level.

Fit stores the pooled deep features of the good images; an image's score is the mean Euclidean distance
of its pooled feature to the ``k`` nearest stored ones. The map is the coarse shared one of
``pooled.PooledFeatureModel`` (per-position z-score, stride 32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from defectlab.anomaly.pooled import PooledConfig, PooledFeatureModel
from defectlab.anomaly.registry import ANOMALY_MODELS
from defectlab.errors import ConfigError


@dataclass
class KNNConfig(PooledConfig):
    k: int = 5  # neighbours averaged


@ANOMALY_MODELS.register("knn")
class DeepKNN(PooledFeatureModel):
    Config = KNNConfig
    name = "knn"

    def __init__(self, config: KNNConfig | None = None, *, pretrained: bool = True) -> None:
        super().__init__(config, pretrained=pretrained)
        if self.config.k < 1:
            raise ConfigError("knn: k must be >= 1")
        self.register_buffer("bank_", torch.empty(0, 0))

    def _fit_vectors(self, x: torch.Tensor) -> None:
        self.bank_ = x

    def _score_vectors(self, x: torch.Tensor) -> torch.Tensor:
        k = min(self.config.k, self.bank_.shape[0])
        d2 = (x * x).sum(1, keepdim=True) - 2 * x @ self.bank_.T + (self.bank_ * self.bank_).sum(1)
        return d2.clamp_min(0).sqrt().topk(k, dim=1, largest=False).values.mean(1)

    def summary(self) -> dict[str, Any]:
        return {"bank": list(self.bank_.shape), "layers": self.features.layers,
                "backbone_weights": self.features.info.weights}

