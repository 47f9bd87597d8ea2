"""Classifier models: one registry, one output type, one way to freeze and replace the head.

Every builder is keyword-only, ``(*, num_classes, image_size, weights, dropout, **options) -> Classifier``,
and registers itself in ``CLASSIFIERS``. A :class:`Classifier` is ``body`` (image -> (B, D) features)
plus ``head`` (dropout(p) + linear). ``forward(x)`` returns logits; ``forward_features(x)`` the (B, D)
features, for methods that need them (see ``defectlab.classify.train``).

Pretrained weights go through the offline resolver of ``defectlab.backbones`` (user file, torch cache,
weights package, else a clear error). ``weights="none"`` is random init; ``"auto"`` takes ImageNet weights
when they can be found here and falls back to random init with a warning. What was actually loaded is
kept in ``Classifier.weights_tag`` and shown in the results table (``weights`` column). The input
normalisation the weights expect is kept in ``Classifier.mean/std`` and saved with every checkpoint.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from defectlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from defectlab.errors import ConfigError
from defectlab.registry import Registry

log = logging.getLogger(__name__)

CLASSIFIERS: Registry[Callable[..., "Classifier"]] = Registry("classifier model")


@dataclass
class ModelConfig:
    name: str = "simple_cnn"  # a CLASSIFIERS name
    weights: str = "none"  # "none" (random init) | "imagenet" | "auto" | path to a weights file
    #                        ("checkpoint": random init without a warning, a saved state dict is loaded next)
    freeze: int | str = 0  # freeze the first k stages of the body, or "all" (train the head only)
    dropout: float = 0.0  # dropout before the linear head
    options: dict[str, Any] = field(default_factory=dict)  # builder-specific (e.g. resnet_scratch depth)


class Classifier(nn.Module):
    """``body`` -> (B, D) features, ``head`` -> logits. ``stages`` name the body's parameter prefixes
    from input to output, the units that ``freeze`` counts."""

    def __init__(self, body: nn.Module, num_features: int, num_classes: int, *, dropout: float = 0.0,
                 stages: Sequence[Sequence[str]] = (), weights_tag: str = "random init",
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))
        self.num_features = num_features
        self.num_classes = num_classes
        self.stages = [tuple(s) for s in stages]
        self.weights_tag = weights_tag
        self.mean, self.std = tuple(mean), tuple(std)
        self._frozen: tuple[str, ...] = ()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def freeze(self, k: int | str) -> None:
        """Freeze the first ``k`` stages (``"all"``: the whole body). Frozen BatchNorm layers stay in
        eval mode, so their running statistics keep the pretrained values."""
        if k in ("all", -1):
            prefixes: tuple[str, ...] = ("",)
        elif isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= len(self.stages):
            prefixes = tuple(p for stage in self.stages[:k] for p in stage)
        else:
            raise ConfigError(f"model.freeze must be 0..{len(self.stages)} (stages of this model) or 'all', got {k!r}")
        self._frozen = prefixes
        for name, p in self.body.named_parameters():
            p.requires_grad_(not _matches(name, prefixes))
        self.train(self.training)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self._frozen:
            for name, m in self.body.named_modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and _matches(name, self._frozen):
                    m.eval()
        return self

    def n_params(self, trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable)


def _matches(name: str, prefixes: Sequence[str]) -> bool:
    return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)


def build_classifier(cfg: ModelConfig, *, num_classes: int, image_size: int) -> Classifier:
    builder = CLASSIFIERS.get(cfg.name)
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {cfg.dropout}")
    try:
        model = builder(num_classes=num_classes, image_size=image_size, weights=cfg.weights,
                        dropout=cfg.dropout, **cfg.options)
    except TypeError as exc:  # an unknown option name: say which model and what it accepts
        raise ConfigError(f"model '{cfg.name}': {exc}".replace(builder.__name__ + "()", "options")) from None
    model.freeze(cfg.freeze)
    return model


# --------------------------------------------------------------------------------------------- weights
def pretrained_state(arch: str, weights: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """(state dict or None for random init, a tag saying what was loaded), through the offline resolver
    of ``defectlab.backbones`` (user file, torch cache, weights package; a clear error otherwise)."""
    from defectlab.backbones.weights import find_weights, load_state_dict_file

    if weights == "checkpoint":
        return None, "from checkpoint"
    if weights == "auto":
        try:
            path, source = find_weights(arch, "imagenet")
        except ConfigError as exc:
            log.warning("%s: %s -> training from RANDOM INIT", arch, str(exc).split(":")[0])
            return None, "random init (no weights here)"
    else:
        path, source = find_weights(arch, weights)
    if path is None:
        log.warning("%s: RANDOM INIT (weights: %s)", arch, weights)
        return None, "random init"
    return load_state_dict_file(path), source.split(" (")[0] if source.startswith("imagenet") else source


def load_pretrained(module: nn.Module, state: dict[str, torch.Tensor] | None, arch: str) -> None:
    """Load a pretrained state, leaving out the original classifier head (ours has other classes)."""
    if state is None:
        return
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < 0.9 * len(own):
        raise ConfigError(f"{arch}: the weights match only {len(usable)}/{len(own)} tensors of the model")
    module.load_state_dict(usable, strict=False)


# ---------------------------------------------------------------------------------------- own models
def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@CLASSIFIERS.register("simple_cnn")
def simple_cnn(*, num_classes: int, image_size: int, weights: str = "none", dropout: float = 0.0,
               width: int = 32, blocks: int = 4) -> Classifier:
    """A small baseline: ``blocks`` x (conv-bn-relu, max-pool), channels doubling from ``width``."""
    if weights not in ("none", "checkpoint"):
        raise ConfigError("simple_cnn has no pretrained weights; use weights: none")
    layers: list[nn.Module] = []
    cin = 3
    for i in range(blocks):
        cout = width * 2 ** i
        layers += [_conv_bn(cin, cout), nn.MaxPool2d(2)]
        cin = cout
    body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    stages = [(str(2 * i), str(2 * i + 1)) for i in range(blocks)]
    return Classifier(body, cin, num_classes, dropout=dropout, stages=stages)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        nn.init.zeros_(self.bn2.weight)  # each residual branch starts as identity: stable from scratch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


RESNET_DEPTHS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


@CLASSIFIERS.register("resnet_scratch")
def resnet_scratch(*, num_classes: int, image_size: int, weights: str = "none", dropout: float = 0.0,
                   depth: int = 10, width: int = 32) -> Classifier:
    """This project's ResNet: basic blocks, ``depth`` 10/18/34, channels ``width`` x (1, 2, 4, 8).
    The stem is a 3x3 conv (no max-pool) so small images keep their resolution."""
    if weights not in ("none", "checkpoint"):
        raise ConfigError("resnet_scratch trains from scratch; use weights: none")
    if depth not in RESNET_DEPTHS:
        raise ConfigError(f"resnet_scratch depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
    mods: dict[str, nn.Module] = {"stem": _conv_bn(3, width, stride=2)}
    cin = width
    for i, n in enumerate(RESNET_DEPTHS[depth]):
        cout = width * 2 ** i
        blocks = [BasicBlock(cin if j == 0 else cout, cout, 2 if (j == 0 and i > 0) else 1) for j in range(n)]
        mods[f"layer{i + 1}"] = nn.Sequential(*blocks)
        cin = cout
    body = nn.Sequential(OrderedDict(**mods, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()))
    stages = [("stem",)] + [(f"layer{i + 1}",) for i in range(4)]
    return Classifier(body, cin, num_classes, dropout=dropout, stages=stages)


# heads of the frozen-feature probes (defectlab.classify.probe)
class Standardize(nn.Module):
    """``(x - mean) / std`` with the training features' statistics as buffers (saved in the checkpoint)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, feats: torch.Tensor) -> Standardize:
        self.mean.copy_(feats.mean(0))
        self.std.copy_(feats.std(0).clamp(min=1e-6))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class L2Normalize(nn.Module):
    """Unit-length rows (the prototype probe's head input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1)
