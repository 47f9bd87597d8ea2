"""BCE + soft Dice on per-channel sigmoid logits (binary: 1 channel; multi-class: one per defect type)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - Dice per channel, computed over the whole batch (empty good masks weigh in through the sums)."""
    prob = torch.sigmoid(logits)
    dims = (0, 2, 3)
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * inter + eps) / (denom + eps)).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, dice_weight: float = 1.0,
                  pos_weight: float = 1.0) -> torch.Tensor:
    pw = torch.tensor(pos_weight, device=logits.device) if pos_weight != 1.0 else None
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw)
    return bce + dice_weight * soft_dice_loss(logits, target)
