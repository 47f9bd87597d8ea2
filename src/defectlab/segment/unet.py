"""U-Net for defect masks: a small conv encoder trained from scratch, or MobileNetV2 features
(ImageNet weights found offline by :func:`defectlab.backbones.weights.resolve_weights`).

The decoder upsamples by 2 at each level, concatenates the encoder's skip feature and applies two
3x3 conv-BN-ReLU; a 1x1 head gives one logit channel per class (1 for binary), at the input size.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from defectlab.errors import ConfigError
from defectlab.registry import Registry

log = logging.getLogger(__name__)

ENCODERS: Registry = Registry("U-Net encoder")


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class SmallEncoder(nn.Module):
    """``depth`` levels of conv blocks, widths ``base * 2**i``, max-pool between (strides 1..2**(depth-1))."""

    def __init__(self, *, base: int = 16, depth: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth)]
        ins = [in_channels] + widths[:-1]
        self.blocks = nn.ModuleList(conv_block(cin, cout) for cin, cout in zip(ins, widths, strict=True))
        self.channels = widths

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            feats.append(x)
        return feats


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 ``features`` tapped at strides 2, 4, 8, 16, 32 (16, 24, 32, 96, 320 channels)."""

    TAPS = (1, 3, 6, 13, 17)  # index of the last block of each stride

    def __init__(self, *, weights: str | Path | None = "imagenet") -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2

        model = mobilenet_v2(weights=None)
        if weights is not None:
            from defectlab.backbones.weights import resolve_weights

            state = resolve_weights("mobilenet_v2", weights)
            if state is not None:
                model.load_state_dict(state)
        self.features = model.features[: self.TAPS[-1] + 1]
        self.channels = [16, 24, 32, 96, 320]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.TAPS:
                feats.append(x)
        return feats


class UNet(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int = 1, *, prior: float = 0.02) -> None:
        super().__init__()
        self.encoder = encoder
        ch = list(encoder.channels)
        self.ups = nn.ModuleList()
        for deep, skip in zip(ch[::-1][:-1], ch[::-1][1:], strict=True):
            self.ups.append(conv_block(deep + skip, skip))
        self.head = nn.Conv2d(ch[0], num_classes, 1)
        # defects cover a few % of the pixels: start from that prior, not p = 0.5 everywhere
        nn.init.constant_(self.head.bias, math.log(prior / (1.0 - prior)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        feats = self.encoder(x)
        y = feats[-1]
        for block, skip in zip(self.ups, feats[-2::-1], strict=True):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
        y = self.head(y)
        if y.shape[-2:] != size:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y


@ENCODERS.register("small")
def _small(*, base: int = 16, weights: str | Path | None = None) -> nn.Module:
    if weights not in (None, "none", "random"):
        raise ConfigError("the 'small' U-Net encoder has no pretrained weights: use --weights none "
                          "or --encoder mobilenet_v2")
    return SmallEncoder(base=base)


@ENCODERS.register("mobilenet_v2")
def _mobilenet(*, base: int = 16, weights: str | Path | None = "imagenet") -> nn.Module:
    return MobileNetV2Encoder(weights=weights)


def build_unet(*, encoder: str = "small", num_classes: int = 1, base: int = 16,
               weights: str | Path | None = None) -> UNet:
    """A U-Net with ``num_classes`` logit channels. ``weights``: encoder weights ("imagenet", a file,
    "none"; None = no pretrained weights, a full state dict is loaded next)."""
    return UNet(ENCODERS.get(encoder)(base=base, weights=weights), num_classes)
