"""Shared core of the image-level methods on pooled deep features (kNN, Deep SVDD, one-class SVM).

``PooledFeatureModel`` extracts, for every image, the feature maps of ``layers`` (default: the backbone's
deep layer, stride 32), and hands the globally average-pooled vectors (N, C) to the method's
``_fit_vectors`` / ``_score_vectors``: the image score is the method's.

The map is coarse (stride 32) and the same for all three: at each position, the root mean squared
z-score of the feature vector against the good images' per-position mean and standard deviation
(upsampled, Gaussian-smoothed with ``sigma``). It says roughly where the image looks unusual; use
PatchCore or PaDiM when localisation matters.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from defectlab.anomaly.base import AnomalyModel, AnomalyOutput, image_batches
from defectlab.anomaly.features import BackboneFeatures, gaussian_blur, upsample
from defectlab.errors import ConfigError


@dataclass
class PooledConfig:
    """What every pooled-feature method shares; each method's own Config adds its knobs."""

    backbone: str = "mobilenet_v2"
    weights: str = "imagenet"  # "imagenet" | "none" | a file
    layers: tuple[str, ...] | None = None  # None: the backbone's deep layer
    sigma: float = 4.0  # smoothing of the coarse map


class PooledFeatureModel(AnomalyModel):
    """Subclasses set ``Config`` (a ``PooledConfig``) and implement the two hooks."""

    fixed_input = True  # the coarse map's per-position statistics need one grid

    def __init__(self, config: Any = None, *, pretrained: bool = True) -> None:
        super().__init__(config, pretrained=pretrained)
        c = self.config
        self.features = BackboneFeatures(c.backbone, c.layers, weights=c.weights if pretrained else None, pooled=True)
        self.mean, self.std = self.features.info.mean, self.features.info.std
        self.register_buffer("pos_mean_", torch.empty(0, 0, 0))  # (C, h, w)
        self.register_buffer("pos_std_", torch.empty(0, 0, 0))

    def _maps(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.features(images.to(self.device))
        grid = next(iter(feats.values())).shape[-2:]
        return torch.cat([F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
                          if f.shape[-2:] != grid else f for f in feats.values()], dim=1)

    def fit(self, loader: Iterable[Any]) -> PooledFeatureModel:
        pooled, n, s1, s2 = [], 0, None, None
        for images in image_batches(loader, desc=f"{self.name}: features"):
            fmap = self._maps(images).double()
            pooled.append(fmap.mean(dim=(-2, -1)).float())
            s1 = fmap.sum(0) if s1 is None else s1 + fmap.sum(0)
            s2 = (fmap ** 2).sum(0) if s2 is None else s2 + (fmap ** 2).sum(0)
            n += fmap.shape[0]
        if s1 is None or s2 is None or n < 2:
            raise ConfigError(f"{self.name}: needs at least 2 training images")
        mean = s1 / n
        var = ((s2 - n * mean ** 2) / (n - 1)).clamp_min(0)
        self.pos_mean_ = mean.float()
        self.pos_std_ = (var.sqrt() + 1e-3 * var.sqrt().mean() + 1e-6).float()
        self._fit_vectors(torch.cat(pooled).clone())
        self._mark_fitted()
        return self

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> AnomalyOutput:
        self._check_fitted()
        fmap = self._maps(images)
        scores = self._score_vectors(fmap.mean(dim=(-2, -1)))
        z = ((fmap - self.pos_mean_) / self.pos_std_).pow(2).mean(1).sqrt()
        maps = gaussian_blur(upsample(z, tuple(images.shape[-2:])), self.config.sigma)
        return AnomalyOutput(scores.float().cpu(), maps.cpu())

    def _fit_vectors(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _score_vectors(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

