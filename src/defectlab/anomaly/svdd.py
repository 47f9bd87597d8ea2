"""Deep SVDD (Ruff et al., "Deep One-Class Classification", ICML 2018) on pooled deep features.

A small bias-free MLP ``phi`` maps the frozen backbone's pooled features (``pooled.PooledFeatureModel``)
into a space where good images are pulled towards a fixed centre ``c`` (the mean of the initial outputs,
coordinates too close to 0 pushed to +-``eps`` as in the paper, so the trivial all-zero solution is not
available); the loss is the mean squared distance to ``c`` plus weight decay. Score = ``||phi(x) - c||^2``.
Features are standardised with the training mean/std first. The map is the shared coarse one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from defectlab.anomaly.pooled import PooledConfig, PooledFeatureModel
from defectlab.anomaly.registry import ANOMALY_MODELS
from defectlab.errors import ConfigError


@dataclass
class DeepSVDDConfig(PooledConfig):
    hidden: int = 256  # MLP width
    out_dim: int = 32  # dimension of the hypersphere space
    epochs: int = 100  # over the cached features (cheap: no backbone pass)
    lr: float = 1e-3
    weight_decay: float = 1e-5
    eps: float = 0.1  # centre coordinates are kept at least this far from 0
    seed: int = 0


@ANOMALY_MODELS.register("deep_svdd")
class DeepSVDD(PooledFeatureModel):
    Config = DeepSVDDConfig
    name = "deep_svdd"

    def __init__(self, config: DeepSVDDConfig | None = None, *, pretrained: bool = True) -> None:
        super().__init__(config, pretrained=pretrained)
        c: DeepSVDDConfig = self.config
        if c.epochs < 1 or c.hidden < 1 or c.out_dim < 1:
            raise ConfigError("deep_svdd: epochs, hidden and out_dim must be >= 1")
        self.head: nn.Module | None = None  # built in fit (the input width is the backbone's)
        self.register_buffer("centre_", torch.empty(0))
        self.register_buffer("x_mean_", torch.empty(0))
        self.register_buffer("x_std_", torch.empty(0))
        self.register_buffer("head_shape_", torch.zeros(3, dtype=torch.long))  # in, hidden, out

    def _make_head(self, d_in: int) -> nn.Module:
        c: DeepSVDDConfig = self.config
        return nn.Sequential(nn.Linear(d_in, c.hidden, bias=False), nn.LeakyReLU(0.1),
                             nn.Linear(c.hidden, c.out_dim, bias=False))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        shape = state_dict.get("head_shape_")
        if shape is not None and int(shape[0]) > 0 and self.head is None:
            self.head = self._make_head(int(shape[0]))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _fit_vectors(self, x: torch.Tensor) -> None:
        c: DeepSVDDConfig = self.config
        torch.manual_seed(c.seed)
        self.x_mean_ = x.mean(0)
        self.x_std_ = x.std(0) + 1e-6
        z = (x - self.x_mean_) / self.x_std_
        self.head = self._make_head(z.shape[1]).to(z.device)
        self.head_shape_ = torch.tensor([z.shape[1], c.hidden, c.out_dim])
        with torch.no_grad():
            centre = self.head(z).mean(0)
            centre[(centre.abs() < c.eps) & (centre < 0)] = -c.eps
            centre[(centre.abs() < c.eps) & (centre >= 0)] = c.eps
        self.centre_ = centre
        opt = torch.optim.Adam(self.head.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        batch = min(64, z.shape[0])
        gen = torch.Generator().manual_seed(c.seed)
        self.head.train()
        for _ in range(c.epochs):
            for idx in torch.randperm(z.shape[0], generator=gen).split(batch):
                loss = ((self.head(z[idx]) - centre) ** 2).sum(1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.head.eval()

    def _score_vectors(self, x: torch.Tensor) -> torch.Tensor:
        assert self.head is not None
        return ((self.head((x - self.x_mean_) / self.x_std_) - self.centre_) ** 2).sum(1)

    def summary(self) -> dict[str, Any]:
        return {"head": self.head_shape_.tolist(), "layers": self.features.layers,
                "backbone_weights": self.features.info.weights}
