"""Classification losses for long-tailed training data, and post-hoc logit adjustment.

Every entry of ``LOSSES`` is a builder ``(class_counts, **params) -> nn.Module`` whose forward is
``(logits (B, C), targets (B,) int64) -> scalar``. ``class_counts[c]`` is the number of training images
of class ``c`` (the prior the losses correct for). Reductions, precisely:

* ``ce``: mean over the batch of ``-log softmax(z)_y``.
* ``weighted_ce``: class weights ``w_c ∝ n_c^-power`` normalised to mean 1 over classes; the loss is
  ``sum_i w_{y_i} l_i / sum_i w_{y_i}`` (``torch.nn.CrossEntropyLoss(weight=w)``).
* ``focal`` (Lin et al. 2017): ``-alpha_y (1 - p_y)^gamma log p_y``, mean over the batch; ``alpha`` a
  per-class list (or none = 1).
* ``cb`` (class-balanced, Cui et al. 2019): weights ``w_c = (1 - beta) / (1 - beta^n_c)`` (inverse
  effective number), normalised to sum to C, applied per sample on top of CE or focal (``base``); mean
  over the batch of ``w_{y_i} l_i`` as in the paper's code.
* ``balanced_softmax`` (Ren et al. 2020): CE on ``z + log n``.
* ``logit_adjusted`` (Menon et al. 2021): CE on ``z + tau * log pi`` with ``pi = n / sum n``.

``ce``, ``weighted_ce``, ``balanced_softmax`` and ``logit_adjusted`` also take ``label_smoothing``.

``posthoc_logit_adjust(logits, class_counts, tau)`` returns ``z - tau * log pi`` for a model trained
with plain CE (Menon et al.'s post-hoc variant): argmax then approximates the balanced-error optimum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from defectlab.errors import ConfigError
from defectlab.registry import Registry

LOSSES: Registry = Registry("loss")


def check_counts(class_counts: Sequence[int]) -> torch.Tensor:
    """Class counts as a float tensor; every class must have at least one training image."""
    counts = torch.as_tensor([float(c) for c in class_counts], dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() < 2:
        raise ConfigError(f"class_counts: need one count per class for at least 2 classes, got {list(class_counts)}")
    bad = [i for i, c in enumerate(counts.tolist()) if c < 1]
    if bad:
        raise ConfigError(f"class_counts: class(es) {bad} have no training images; every class needs at least one")
    return counts


def log_prior(class_counts: Sequence[int]) -> torch.Tensor:
    """``log pi_c`` with ``pi = n / sum n`` (float32)."""
    counts = check_counts(class_counts)
    return (counts / counts.sum()).log().float()


def posthoc_logit_adjust(logits: torch.Tensor, class_counts: Sequence[int], tau: float = 1.0) -> torch.Tensor:
    """Post-hoc logit adjustment (Menon et al. 2021, eq. 8): ``logits - tau * log pi``."""
    return logits - tau * log_prior(class_counts).to(logits.device, logits.dtype)


class _OffsetCE(nn.Module):
    """Cross-entropy on ``logits + offset`` (a per-class additive term, a buffer so it moves with .to())."""

    def __init__(self, offset: torch.Tensor, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("offset", offset.float())
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.offset.to(logits.dtype), targets, label_smoothing=self.label_smoothing)


class _WeightedCE(nn.Module):
    def __init__(self, weight: torch.Tensor | None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", None if weight is None else weight.float())
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(logits.dtype)
        return F.cross_entropy(logits, targets, weight=w, label_smoothing=self.label_smoothing)


class FocalLoss(nn.Module):
    """``-w_y * alpha_y * (1 - p_y)^gamma * log p_y`` per sample, mean over the batch.

    ``sample_weight`` (per class) is how the class-balanced loss reuses this module.
    """

    def __init__(self, gamma: float = 2.0, alpha: torch.Tensor | None = None,
                 sample_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"focal: gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.register_buffer("alpha", None if alpha is None else alpha.float())
        self.register_buffer("sample_weight", None if sample_weight is None else sample_weight.float())

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)
        loss = -logp if self.gamma == 0 else -((1 - logp.exp()).clamp_min(0) ** self.gamma) * logp
        if self.alpha is not None:
            loss = loss * self.alpha[targets]
        if self.sample_weight is not None:
            loss = loss * self.sample_weight[targets]
        return loss.mean()


def _per_class(values: Sequence[float] | None, n: int, name: str) -> torch.Tensor | None:
    if values is None:
        return None
    if isinstance(values, (int, float)):
        raise ConfigError(f"{name}: give one value per class ({n} values), not a single number")
    t = torch.as_tensor([float(v) for v in values])
    if t.numel() != n:
        raise ConfigError(f"{name}: expected {n} values (one per class), got {t.numel()}")
    return t


@LOSSES.register("ce")
def ce(class_counts: Sequence[int], *, label_smoothing: float = 0.0) -> nn.Module:
    """Plain cross-entropy (class counts unused, accepted for a uniform builder signature)."""
    check_counts(class_counts)
    return _WeightedCE(None, label_smoothing)


@LOSSES.register("weighted_ce")
def weighted_ce(class_counts: Sequence[int], *, power: float = 1.0, label_smoothing: float = 0.0) -> nn.Module:
    """Inverse-frequency weighted CE: ``w_c ∝ n_c^-power`` (power 0.5 = inverse square root), mean-1 weights."""
    counts = check_counts(class_counts)
    w = counts ** (-float(power))
    w = w / w.mean()
    return _WeightedCE(w.float(), label_smoothing)


@LOSSES.register("focal")
def focal(class_counts: Sequence[int], *, gamma: float = 2.0, alpha: Sequence[float] | None = None) -> nn.Module:
    counts = check_counts(class_counts)
    return FocalLoss(gamma, _per_class(alpha, counts.numel(), "focal.alpha"))


def effective_number_weights(class_counts: Sequence[int], beta: float) -> torch.Tensor:
    """Cui et al. 2019: ``(1 - beta) / (1 - beta^n)``, normalised to sum to the number of classes."""
    if not 0.0 <= beta < 1.0:
        raise ConfigError(f"cb: beta must be in [0, 1), got {beta}")
    counts = check_counts(class_counts)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(float(beta), dtype=torch.float64), counts))
    return (w / w.sum() * counts.numel()).float()


@LOSSES.register("cb")
def class_balanced(class_counts: Sequence[int], *, beta: float = 0.999, base: str = "ce",
                   gamma: float = 1.0) -> nn.Module:
    """Class-balanced loss: effective-number weights on top of ``base`` = ``ce`` or ``focal`` (gamma)."""
    w = effective_number_weights(class_counts, beta)
    if base == "ce":
        return FocalLoss(0.0, sample_weight=w)
    if base == "focal":
        return FocalLoss(gamma, sample_weight=w)
    raise ConfigError(f"cb: unknown base '{base}'; known: ce, focal")


@LOSSES.register("balanced_softmax")
def balanced_softmax(class_counts: Sequence[int], *, label_smoothing: float = 0.0) -> nn.Module:
    return _OffsetCE(check_counts(class_counts).log(), label_smoothing)


@LOSSES.register("logit_adjusted")
def logit_adjusted(class_counts: Sequence[int], *, tau: float = 1.0, label_smoothing: float = 0.0) -> nn.Module:
    if not math.isfinite(tau):
        raise ConfigError(f"logit_adjusted: tau must be finite, got {tau}")
    return _OffsetCE(tau * log_prior(class_counts), label_smoothing)


def build_loss(name: str, class_counts: Sequence[int], params: dict | None = None) -> nn.Module:
    """``LOSSES.get(name)(class_counts, **params)`` with unknown parameters reported as a ConfigError."""
    builder = LOSSES.get(name)
    try:
        return builder(class_counts, **(params or {}))
    except TypeError as exc:
        raise ConfigError(f"loss '{name}': {exc}") from None
