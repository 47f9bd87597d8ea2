"""PaDiM (Defard et al., "PaDiM: a Patch Distribution Modeling Framework", ICPR 2021).

Fit: at every position of the stride-8 feature grid, a multivariate Gaussian of the patch features of the
good images (mid-level layers concatenated, ``features.patch_embedding`` without neighbourhood pooling),
on a fixed random subset of ``n_features`` channels (the paper's dimensionality reduction), with
covariance ``S + eps I``. Statistics are accumulated batch by batch (sums of x and x x^T), so memory does
not grow with the number of images. Predict: the Mahalanobis distance of each test patch to its
position's Gaussian, upsampled and Gaussian-smoothed (sigma 4) = the map; image score = map maximum.

Positions are tied to the input grid, so PaDiM suits aligned images (objects, fixed camera); PatchCore
does not need alignment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from defectlab.anomaly.base import AnomalyModel, AnomalyOutput, image_batches
from defectlab.anomaly.features import BackboneFeatures, gaussian_blur, patch_embedding, upsample
from defectlab.anomaly.registry import ANOMALY_MODELS
from defectlab.errors import ConfigError


@dataclass
class PaDiMConfig:
    backbone: str = "mobilenet_v2"  # any name in defectlab.backbones.BACKBONES
    weights: str = "imagenet"  # "imagenet" | "none" | a file
    layers: tuple[str, ...] | None = None  # None: the backbone's mid-level layers
    n_features: int = 100  # random channel subset size (all channels if the layers have fewer)
    eps: float = 0.01  # covariance regularisation
    sigma: float = 4.0  # Gaussian smoothing of the map, in input pixels
    seed: int = 0  # channel subset


@ANOMALY_MODELS.register("padim")
class PaDiM(AnomalyModel):
    Config = PaDiMConfig
    name = "padim"
    fixed_input = True  # one Gaussian per position of a fixed grid

    def __init__(self, config: PaDiMConfig | None = None, *, pretrained: bool = True) -> None:
        super().__init__(config, pretrained=pretrained)
        c: PaDiMConfig = self.config
        if c.n_features < 1:
            raise ConfigError("padim: n_features must be >= 1")
        self.features = BackboneFeatures(c.backbone, c.layers, weights=c.weights if pretrained else None)
        self.mean, self.std = self.features.info.mean, self.features.info.std
        self.register_buffer("channels_", torch.empty(0, dtype=torch.long))
        self.register_buffer("mu_", torch.empty(0, 0))  # (P, C)
        self.register_buffer("inv_cov_", torch.empty(0, 0, 0))  # (P, C, C)
        self.register_buffer("grid_", torch.zeros(2, dtype=torch.long))  # (h, w) of the feature grid

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, P, C) patch features on the chosen channels."""
        emb = patch_embedding(self.features(images.to(self.device)), neighbourhood=1, max_dim=None)
        if self.channels_.numel() == 0:
            gen = torch.Generator().manual_seed(self.config.seed)
            n = min(self.config.n_features, emb.shape[1])
            self.channels_ = torch.randperm(emb.shape[1], generator=gen)[:n].sort().values
            self.grid_ = torch.tensor(emb.shape[-2:])
        emb = emb[:, self.channels_.to(emb.device)]
        return emb.flatten(2).transpose(1, 2).double()

    def fit(self, loader: Iterable[Any]) -> PaDiM:
        self.channels_ = torch.empty(0, dtype=torch.long)
        n, s1, s2 = 0, None, None
        for images in image_batches(loader, desc="padim: features"):
            x = self._embed(images)
            if s1 is None:
                s1 = torch.zeros(x.shape[1:], dtype=torch.float64, device=x.device)
                s2 = torch.zeros(x.shape[1], x.shape[2], x.shape[2], dtype=torch.float64, device=x.device)
            if tuple(x.shape[1:]) != tuple(s1.shape):
                raise ConfigError("padim: all images must have the same input size")
            s1 += x.sum(0)
            s2 += torch.einsum("bpc,bpd->pcd", x, x)
            n += x.shape[0]
        if s1 is None or s2 is None or n < 2:
            raise ConfigError("padim: needs at least 2 training images")
        mu = s1 / n
        cov = (s2 - n * torch.einsum("pc,pd->pcd", mu, mu)) / (n - 1)
        cov += self.config.eps * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        self.mu_ = mu.float()
        self.inv_cov_ = torch.linalg.inv(cov).float().contiguous()  # as saved: same einsum path after load
        self._mark_fitted()
        return self

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> AnomalyOutput:
        self._check_fitted()
        x = self._embed(images).float()
        if x.shape[1] != self.mu_.shape[0]:
            raise ConfigError("padim: input size differs from the one it was fitted on")
        d = x - self.mu_
        m = torch.einsum("bpc,pcd,bpd->bp", d, self.inv_cov_, d).clamp_min_(0).sqrt_()
        h, w = (int(v) for v in self.grid_)
        maps = gaussian_blur(upsample(m.view(-1, h, w), tuple(images.shape[-2:])), self.config.sigma)
        return AnomalyOutput(maps.flatten(1).max(1).values.cpu(), maps.cpu())

    def summary(self) -> dict[str, Any]:
        return {"positions": int(self.mu_.shape[0]), "channels": int(self.channels_.numel()),
                "layers": self.features.layers, "backbone_weights": self.features.info.weights}
