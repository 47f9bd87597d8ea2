"""Backbones: keyword-only builders returning a model plus the metadata that goes with its weights.

    >>> from defectlab.backbones import build_backbone, BACKBONES
    >>> bb = build_backbone("mobilenet_v2", weights="imagenet")   # offline, see ``weights.py``
    >>> bb.model, bb.info.mean, bb.info.std, bb.info.weights, bb.info.patch_layers

``weights`` is ``"imagenet"`` (find ImageNet weights offline), ``"none"``/``"random"`` (random init, logged
as a warning), a file path, or ``None`` (random init, silently: a saved state dict is loaded next).

``info.patch_layers`` are the default mid-level layers for patch methods (PatchCore, PaDiM);
``info.pooled_layer`` the default deep layer for image-level methods (kNN, Deep SVDD, OC-SVM).
Layer names are ``model.named_modules()`` names. Adding an architecture = one ``_register(...)`` line
below plus one ``WeightsFile`` entry in ``weights.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from defectlab.backbones.features import FeatureExtractor
from defectlab.backbones.weights import WEIGHT_FILES, find_weights, load_state_dict_file, resolve_weights
from defectlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from defectlab.errors import BadInputError
from defectlab.registry import Registry

__all__ = ["BACKBONES", "Backbone", "BackboneInfo", "FeatureExtractor", "WEIGHT_FILES", "build_backbone",
           "find_weights", "resolve_weights"]


@dataclass(frozen=True)
class BackboneInfo:
    arch: str
    mean: tuple[float, float, float]  # input normalisation the weights expect
    std: tuple[float, float, float]
    weights: str  # where the weights came from ("imagenet (package ...)", "random init", "file ...")
    patch_layers: tuple[str, ...]  # default mid-level feature layers (stride 8 and 16)
    pooled_layer: str  # default deep layer for pooled image features
    pretrained: bool


@dataclass
class Backbone:
    model: nn.Module
    info: BackboneInfo


BACKBONES: Registry[Callable[..., Backbone]] = Registry("backbone")


def build_backbone(name: str, *, weights: str | Path | None = "imagenet") -> Backbone:
    """Build a registered backbone in eval mode (see the module docstring for ``weights``)."""
    return BACKBONES.get(name)(weights=weights)


def _load(model: nn.Module, arch: str, weights: str | Path | None) -> str:
    path, source = find_weights(arch, weights)
    state = resolve_weights(arch, weights) if path is None else load_state_dict_file(path)
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing:
            raise BadInputError(path or arch, f"weights do not fit {arch}: {len(missing)} missing keys "
                                              f"(e.g. {missing[0]})")
        if unexpected:
            import logging

            logging.getLogger(__name__).warning("%s: %d unexpected keys in weights ignored (e.g. %s)",
                                                arch, len(unexpected), unexpected[0])
    return source


def _register(arch: str, make: Callable[[], nn.Module], *, patch_layers: tuple[str, ...], pooled_layer: str,
              mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD) -> None:
    def builder(*, weights: str | Path | None = "imagenet") -> Backbone:
        model = make()
        source = _load(model, arch, weights)
        info = BackboneInfo(arch, tuple(mean), tuple(std), source, patch_layers, pooled_layer,  # type: ignore[arg-type]
                            pretrained=source not in ("random init", "from saved state"))
        return Backbone(model.eval(), info)

    builder.__name__ = arch
    builder.__doc__ = f"{arch} backbone; ``weights``: 'imagenet' | 'none' | a file | None."
    BACKBONES.register(arch)(builder)


def _torchvision(arch: str) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(arch, weights=None)

    return make


def _efficientnet_lite(n: int) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            from defectlab.errors import ConfigError

            raise ConfigError(f"efficientnet_lite{n} needs the package efficientnet-lite-pytorch "
                              "(pip install --no-deps efficientnet-lite-pytorch)") from None
        return EfficientNet.from_name(f"efficientnet-lite{n}")

    return make


_register("resnet18", _torchvision("resnet18"), patch_layers=("layer2", "layer3"), pooled_layer="layer4")
_register("resnet50", _torchvision("resnet50"), patch_layers=("layer2", "layer3"), pooled_layer="layer4")
_register("wide_resnet50_2", _torchvision("wide_resnet50_2"), patch_layers=("layer2", "layer3"),
          pooled_layer="layer4")
# mobilenet_v2: features.6 ends stride 8 (32 ch), features.13 ends stride 16 (96 ch), features.18 is the head.
_register("mobilenet_v2", _torchvision("mobilenet_v2"), patch_layers=("features.6", "features.13"),
          pooled_layer="features.18")
# EfficientNet-Lite0 (Google's TF weights, ported): inputs in [-1, 1]; _blocks.4 ends stride 8 (40 ch),
# _blocks.10 stride 16 (112 ch); _bn1 is the 1280-channel head.
_register("efficientnet_lite0", _efficientnet_lite(0), patch_layers=("_blocks.4", "_blocks.10"),
          pooled_layer="_bn1", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
# Lite1 / Lite2 (same port and loader, deeper and wider): the last stride-8 block is _blocks.6 (40 / 48 ch),
# the last stride-16 block _blocks.14 (112 / 120 ch).
for _n in (1, 2):
    _register(f"efficientnet_lite{_n}", _efficientnet_lite(_n), patch_layers=("_blocks.6", "_blocks.14"),
              pooled_layer="_bn1", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
