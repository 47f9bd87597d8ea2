"""One-class SVM (Schoelkopf et al., 2001; scikit-learn's ``OneClassSVM``) on pooled deep features.

Features (``pooled.PooledFeatureModel``) are centred and scaled (one scale for all dimensions), then an RBF
one-class SVM with ``nu`` (an upper bound on the fraction of training images outside the boundary) is
fitted by scikit-learn. Its support vectors, dual coefficients, offset and ``gamma`` are copied into buffers
and the decision function is evaluated in torch, so the model saves as plain tensors: score = ``rho - sum_i
a_i exp(-gamma ||x - s_i||^2)`` (the negated sklearn ``decision_function``: higher = more anomalous, > 0
outside the boundary). The map is the shared coarse one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from defectlab.anomaly.pooled import PooledConfig, PooledFeatureModel
from defectlab.anomaly.registry import ANOMALY_MODELS
from defectlab.errors import ConfigError


@dataclass
class OCSVMConfig(PooledConfig):
    nu: float = 0.1  # upper bound on the training fraction outside the boundary
    gamma: float | None = None  # RBF width; None = sklearn's "scale" (1 / (d * var))


@ANOMALY_MODELS.register("ocsvm")
class OneClassSVM(PooledFeatureModel):
    Config = OCSVMConfig
    name = "ocsvm"

    def __init__(self, config: OCSVMConfig | None = None, *, pretrained: bool = True) -> None:
        super().__init__(config, pretrained=pretrained)
        if not 0 < self.config.nu <= 1:
            raise ConfigError("ocsvm: nu must be in (0, 1]")
        for name in ("support_", "dual_coef_", "x_mean_", "x_std_"):
            self.register_buffer(name, torch.empty(0))
        self.register_buffer("rho_", torch.zeros(()))
        self.register_buffer("gamma_", torch.zeros(()))

    def _fit_vectors(self, x: torch.Tensor) -> None:
        from sklearn.svm import OneClassSVM as SkOCSVM

        self.x_mean_ = x.mean(0)
        # one scale for all dimensions: per-dimension standardisation blows up near-constant channels
        spread = (x - self.x_mean_).pow(2).sum(1).mean().sqrt()
        self.x_std_ = spread.expand(x.shape[1]).clone() / x.shape[1] ** 0.5 + 1e-6
        z = ((x - self.x_mean_) / self.x_std_).double().cpu().numpy()
        svm = SkOCSVM(kernel="rbf", nu=self.config.nu,
                      gamma="scale" if self.config.gamma is None else self.config.gamma).fit(z)
        self.support_ = torch.from_numpy(svm.support_vectors_).float().to(x.device)
        self.dual_coef_ = torch.from_numpy(svm.dual_coef_[0]).float().to(x.device)
        self.rho_ = torch.tensor(float(-svm.intercept_[0]), device=x.device)
        self.gamma_ = torch.tensor(float(svm._gamma), device=x.device)

    def _score_vectors(self, x: torch.Tensor) -> torch.Tensor:
        z = ((x - self.x_mean_) / self.x_std_).double()
        s = self.support_.double()
        d2 = ((z * z).sum(1, keepdim=True) - 2 * z @ s.T + (s * s).sum(1)).clamp_min(0)
        return self.rho_.double() - torch.exp(-self.gamma_.double() * d2) @ self.dual_coef_.double()

    def summary(self) -> dict[str, Any]:
        return {"support_vectors": int(self.support_.shape[0]) if self.support_.dim() == 2 else 0,
                "layers": self.features.layers, "backbone_weights": self.features.info.weights}
