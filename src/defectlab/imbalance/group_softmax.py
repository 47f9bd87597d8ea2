"""Balanced group softmax (BAGS; Li et al., CVPR 2020) for image classification.

Classes are split into groups of similar training frequency (count bins, as in the paper, or explicit
groups such as ``[[good], [all defect types]]``). The classifier has, for every group ``g``, one logit
per class of the group plus one "others" logit, and a separate softmax per group:

* training: in group ``g`` an image of a member class has its own class as target; any other image has
  target "others". As in the paper, "others" images are subsampled so that at most ``others_ratio``
  times as many as the group's own images in the batch contribute (all of them when there are fewer);
  a group with no own image in the batch contributes nothing. The loss is the sum over groups of the
  mean cross-entropy of the contributing images.
* inference: each class takes its probability from its own group's softmax (the "others" entries are
  dropped); the model returns the log of those probabilities as ``(B, C)`` logits, so argmax picks the
  class with the highest within-group probability and softmax renormalises across classes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from defectlab.errors import ConfigError
from defectlab.imbalance.method import METHODS, Method, _check, split_classifier


def groups_by_count(class_counts: Sequence[int], bins: Sequence[int] = (10, 100, 1000)) -> list[list[int]]:
    """Group classes by training count: ``[0, b0), [b0, b1), ...``; empty groups dropped, rarest first."""
    edges = sorted(int(b) for b in bins)
    groups: list[list[int]] = [[] for _ in range(len(edges) + 1)]
    for c, n in enumerate(class_counts):
        groups[sum(n >= e for e in edges)].append(c)
    return [g for g in groups if g]


def check_groups(groups: Sequence[Sequence[int]], num_classes: int) -> list[list[int]]:
    flat = [int(c) for g in groups for c in g]
    if sorted(flat) != list(range(num_classes)) or any(len(g) == 0 for g in groups):
        raise ConfigError(f"group_softmax: groups must be non-empty and cover classes 0..{num_classes - 1} "
                          f"exactly once, got {[list(g) for g in groups]}")
    return [[int(c) for c in g] for g in groups]


class GroupOutput(NamedTuple):
    raw: torch.Tensor  # (B, C + G): per-group [others, members...] blocks
    logits: torch.Tensor  # (B, C): combined log-probabilities (what accuracy is computed on)


class GroupSoftmaxModel(nn.Module):
    def __init__(self, encoder: nn.Module, dim_in: int, groups: list[list[int]]) -> None:
        super().__init__()
        self.encoder = encoder
        self.groups = groups
        num_classes = sum(len(g) for g in groups)
        self.fc = nn.Linear(dim_in, num_classes + len(groups))
        # column of each class in the raw output, and the raw column range of each group
        col = torch.zeros(num_classes, dtype=torch.long)
        starts, pos = [], 0
        for g in groups:
            starts.append(pos)
            for j, c in enumerate(g):
                col[c] = pos + 1 + j
            pos += len(g) + 1
        self.register_buffer("class_col", col, persistent=False)
        self.starts = starts

    def combine(self, raw: torch.Tensor) -> torch.Tensor:
        """Per-group log-softmax, then each class's log-probability from its own group -> (B, C)."""
        parts = zip(self.starts, self.groups, strict=True)
        logp = torch.cat([F.log_softmax(raw[:, s:s + len(g) + 1], dim=1) for s, g in parts], dim=1)
        return logp[:, self.class_col]

    def forward(self, x: torch.Tensor) -> torch.Tensor | GroupOutput:
        raw = self.fc(self.encoder(x).flatten(1))
        logits = self.combine(raw)
        return GroupOutput(raw, logits) if self.training else logits


@METHODS.register("group_softmax")
class GroupSoftmaxMethod(Method):
    """BAGS-style group softmax. ``groups``: explicit class-index groups, else count ``bins``."""

    name = "group_softmax"

    def __init__(self, *, groups: Sequence[Sequence[int]] | None = None, bins: Sequence[int] = (10, 100, 1000),
                 others_ratio: float = 8.0, seed: int | None = None) -> None:
        if others_ratio <= 0:
            raise ConfigError(f"group_softmax: others_ratio must be > 0, got {others_ratio}")
        self.groups_param = groups
        self.bins = tuple(bins)
        self.others_ratio = float(others_ratio)
        # None: torch's global generator, which the trainer seeds per epoch (resume stays exact)
        self.generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        self.groups: list[list[int]] = []
        self._model: GroupSoftmaxModel | None = None

    def wrap_model(self, model: nn.Module, num_classes: int, class_counts: Sequence[int]) -> nn.Module:
        _check(num_classes, class_counts)
        if self.groups_param is not None:
            self.groups = check_groups(self.groups_param, num_classes)
        else:
            self.groups = groups_by_count(class_counts, self.bins)
        if len(self.groups) == 1:
            warnings.warn(f"group_softmax: all classes fall into one group with bins {self.bins}; "
                          "this is plain softmax with an unused 'others' entry", stacklevel=2)
        encoder, dim_in = split_classifier(model, num_classes)
        self._model = GroupSoftmaxModel(encoder, dim_in, self.groups)
        return self._model

    def _weights(self, member: torch.Tensor) -> torch.Tensor:
        """Which images count in a group: all members plus at most ratio * #members 'others'."""
        n_in = int(member.sum())
        if n_in == 0:
            return torch.zeros_like(member, dtype=torch.float)
        others = (~member).nonzero().flatten()
        keep = int(n_in * self.others_ratio)
        weight = member.float()
        if keep >= others.numel():
            weight[others] = 1.0
        else:
            pick = torch.randperm(others.numel(), generator=self.generator)[:keep].to(others.device)
            weight[others[pick]] = 1.0
        return weight

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        if self._model is None:
            raise RuntimeError("call wrap_model before loss")
        if isinstance(outputs, torch.Tensor):  # eval mode: NLL of the combined, renormalised probabilities
            return F.cross_entropy(outputs, targets)
        m = self._model
        total = outputs.raw.new_zeros(())
        for s, g in zip(m.starts, m.groups, strict=True):
            members = torch.as_tensor(g, device=targets.device)
            is_member = (targets[:, None] == members[None, :])
            member = is_member.any(1)
            local = torch.where(member, is_member.float().argmax(1) + 1, torch.zeros_like(targets))
            w = self._weights(member)
            if w.sum() == 0:
                continue
            ce = F.cross_entropy(outputs.raw[:, s:s + len(g) + 1], local, reduction="none")
            total = total + (ce * w).sum() / w.sum()
        return total

    def describe(self) -> str:
        groups = self.groups or self.groups_param or self.bins
        return f"group_softmax (groups={groups}, others_ratio={self.others_ratio:g})"
