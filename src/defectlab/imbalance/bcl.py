"""Balanced contrastive learning (BCL; Zhu et al., CVPR 2022), as a long-tail method.

Model (``wrap_model``): the user's network minus its final linear layer is the encoder ``f``; on top:

* a classifier ``W`` (cosine with a scale by default, as the paper's normalised linear layer),
  trained with the logit-adjusted cross-entropy (the "logit-compensated" classifier);
* a projection head ``g`` (Linear-BN-ReLU-Linear) giving normalised embeddings ``z = g(f(x))``;
* class prototypes ``c_k = normalize(h(w_k))`` -- the classifier's weight vectors passed through a second
  head ``h``, so the prototypes are learnable and tied to the classifier.

Loss (``loss``): ``alpha * LA-CE(logits, y) + beta * L_BSCL``. ``L_BSCL`` is the supervised contrastive
loss over the two augmented views of every image plus the prototypes, with

* class-complement: the prototypes of all classes join every anchor's contrast set (and the own class's
  prototype is a positive), so every class is present in every batch;
* class-averaging: the exponentiated similarities to the members of class ``k`` in the contrast set are
  divided by how many of them there are, so head classes do not dominate the denominator.

Given ``(B, 2, 3, H, W)`` input (``wrap_transform`` makes it) both views are used; a ``(B, 3, H, W)``
batch gives one view (the prototypes still provide positives).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from defectlab.errors import ConfigError
from defectlab.imbalance.losses import LOSSES, build_loss
from defectlab.imbalance.method import (
    METHODS,
    Method,
    TwoViews,
    _check,
    check_params,
    merge_views,
    split_classifier,
)


class BCLOutput(NamedTuple):
    logits: torch.Tensor  # (B, C): the first view (what accuracy is computed on)
    all_logits: torch.Tensor  # (V*B, C), view-major
    embeddings: torch.Tensor  # (V, B, feat_dim), L2-normalised
    prototypes: torch.Tensor  # (C, feat_dim), L2-normalised


def _mlp(dim_in: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_in), nn.BatchNorm1d(dim_in), nn.ReLU(inplace=True),
                         nn.Linear(dim_in, dim_out))


class CosineLinear(nn.Module):
    """``scale * cos(x, w_k)``: the normalised linear classifier of the paper, with a temperature."""

    def __init__(self, dim_in: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim_in))
        nn.init.normal_(self.weight, std=0.01)
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()


class BCLModel(nn.Module):
    def __init__(self, encoder: nn.Module, dim_in: int, num_classes: int, *, feat_dim: int = 128,
                 cosine: bool = True, scale: float = 16.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.fc: nn.Module = CosineLinear(dim_in, num_classes, scale) if cosine else nn.Linear(dim_in, num_classes)
        self.head = _mlp(dim_in, feat_dim)
        self.head_fc = _mlp(dim_in, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor | BCLOutput:
        x, views = merge_views(x)
        feat = self.encoder(x).flatten(1)
        logits = self.fc(feat)
        batch = logits.shape[0] // views
        if not self.training:
            return logits[:batch]
        z = F.normalize(self.head(feat), dim=1).view(views, batch, -1)
        prototypes = F.normalize(self.head_fc(self.fc.weight), dim=1)
        return BCLOutput(logits[:batch], logits, z, prototypes)


def balanced_contrastive_loss(embeddings: torch.Tensor, targets: torch.Tensor, prototypes: torch.Tensor,
                              temperature: float = 0.1) -> torch.Tensor:
    """BCL's balanced supervised contrastive loss.

    ``embeddings`` (V, B, D) normalised, ``targets`` (B,), ``prototypes`` (C, D) normalised.
    For anchor ``i`` (one of the V*B views) with label ``y``, over the contrast set ``A`` = all other
    views plus the C prototypes, ``P`` = members of ``A`` with label ``y`` (the own prototype included)::

        L_i = -1/|P| sum_{p in P} log( exp(s_ip/T) / sum_k 1/|A_k| sum_{j in A_k} exp(s_ij/T) )

    where ``A_k`` are the members of ``A`` of class ``k`` (class-averaging). Mean over anchors.
    """
    embeddings, prototypes = embeddings.float(), prototypes.float()
    v, b, _ = embeddings.shape
    num_classes = prototypes.shape[0]
    n = v * b
    feats = torch.cat([embeddings.reshape(n, -1), prototypes], dim=0)  # (n + C, D)
    labels = torch.cat([targets.repeat(v), torch.arange(num_classes, device=targets.device)])
    sims = feats[:n] @ feats.t() / temperature  # (n, n + C)
    sims = sims - sims.max(dim=1, keepdim=True).values.detach()
    not_self = torch.ones_like(sims)
    not_self[torch.arange(n), torch.arange(n)] = 0
    same = (labels[:n, None] == labels[None, :]).float() * not_self  # positives
    onehot = F.one_hot(labels, num_classes).float()  # (n + C, C)
    # |A_k| for each anchor: class counts of the contrast set (all members minus the anchor itself)
    per_class = onehot.sum(0)[None, :] - F.one_hot(labels[:n], num_classes).float()  # (n, C)
    size_of_cls = per_class.gather(1, labels[None, :].expand(n, -1))  # (n, n + C): |A_{label(j)}|
    exp = sims.exp() * not_self
    denom = (exp / size_of_cls.clamp_min(1)).sum(dim=1, keepdim=True)
    log_prob = sims - denom.log()
    loss = -(same * log_prob).sum(1) / same.sum(1).clamp_min(1)
    return loss.mean()


@METHODS.register("bcl")
class BCLMethod(Method):
    """BCL: ``alpha * CE(ce_loss) + beta * balanced contrastive``; ``ce_loss`` defaults to logit_adjusted."""

    name = "bcl"
    views = 2

    def __init__(self, *, alpha: float = 2.0, beta: float = 0.6, temperature: float = 0.1, feat_dim: int = 128,
                 cosine: bool = True, scale: float = 16.0, ce_loss: str = "logit_adjusted",
                 ce_params: dict | None = None) -> None:
        if temperature <= 0:
            raise ConfigError(f"bcl: temperature must be > 0, got {temperature}")
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)
        self.feat_dim, self.cosine, self.scale = int(feat_dim), bool(cosine), float(scale)
        self.ce_loss, self.ce_params = ce_loss, dict(ce_params or {})
        check_params(LOSSES.get(ce_loss), self.ce_params, f"bcl: ce_loss '{ce_loss}'")
        self.criterion: nn.Module | None = None

    def wrap_model(self, model: nn.Module, num_classes: int, class_counts: Sequence[int]) -> nn.Module:
        _check(num_classes, class_counts)
        self.criterion = build_loss(self.ce_loss, class_counts, self.ce_params)
        encoder, dim_in = split_classifier(model, num_classes)
        return BCLModel(encoder, dim_in, num_classes, feat_dim=self.feat_dim, cosine=self.cosine, scale=self.scale)

    def wrap_transform(self, transform: Any) -> Any:
        return TwoViews(transform)

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        if self.criterion is None:
            raise RuntimeError("call wrap_model before loss")
        crit = self.criterion.to(targets.device)
        if isinstance(outputs, torch.Tensor):  # eval mode: the classification part only
            return self.alpha * crit(outputs, targets)
        views = outputs.embeddings.shape[0]
        ce = crit(outputs.all_logits, targets.repeat(views))
        scl = balanced_contrastive_loss(outputs.embeddings, targets, outputs.prototypes, self.temperature)
        return self.alpha * ce + self.beta * scl

    def describe(self) -> str:
        return f"bcl (alpha={self.alpha:g}, beta={self.beta:g}, T={self.temperature:g}, CE={self.ce_loss})"
