"""Deep features shared by the feature-based methods, and map post-processing.

* ``BackboneFeatures``: a backbone cut after its last needed layer (``defectlab.backbones``), frozen,
  in eval mode, run channels-last; the methods' ``state_dict`` carries its weights so a saved detector
  is self-contained.
* ``patch_embedding``: PatchCore/PaDiM patch features: each layer optionally averaged over a local
  ``k x k`` neighbourhood (stride 1, so every position sees its neighbours: small shifts stop mattering;
  zero padding counted, as in the paper's code: border and letterbox-edge patches are damped rather than
  carrying edge features that vary with each image's aspect ratio — image AUROC 0.854 -> 0.939 on
  magnetic_tile, docs/anomaly.md),
  resampled to the first (finest) layer's grid and concatenated -> (B, C, h, w).
* ``pooled_embedding``: image-level features: global average pooling of layers, concatenated -> (B, C).
* ``gaussian_blur`` / ``upsample``: anomaly-map post-processing at input resolution.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from defectlab.backbones import BackboneInfo, FeatureExtractor, build_backbone

# oneDNN (the CPU convolutions) keeps compiled primitives per input shape, 1024 by default: with inputs
# of many sizes ("native" resize: magnetic_tile has ~680 sizes among 715 images) the process grew by about
# 1 MB per new size. 128 still holds every primitive of one input size (no slower for a dataset of one
# size) and caps the growth near 100 MB (bench/results/anomaly_memory.json). Read once, when the first
# primitive is created; a value the user sets wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "128")


class BackboneFeatures(nn.Module):
    """Frozen backbone returning {layer: feature map}; ``info`` tells weights source and mean/std."""

    def __init__(self, arch: str, layers: Sequence[str] | None, *, weights: str | None, pooled: bool = False) -> None:
        super().__init__()
        bb = build_backbone(arch, weights=weights)
        self.info: BackboneInfo = bb.info
        chosen = list(layers) if layers else ([bb.info.pooled_layer] if pooled else list(bb.info.patch_layers))
        self.layers = chosen
        self.extractor = FeatureExtractor(bb.model, chosen)
        for p in self.extractor.parameters():
            p.requires_grad_(False)
        # channels-last (NHWC) weights and inputs: oneDNN's fast path for these depthwise-separable networks
        # on a CPU, a 1.5-1.95x faster forward than NCHW (bench/backbone_speed.py); outputs equal to 4e-5.
        self.extractor.to(memory_format=torch.channels_last)
        self.extractor.eval()

    def train(self, mode: bool = True) -> BackboneFeatures:  # the backbone stays in eval mode (BN statistics)
        super().train(mode)
        self.extractor.eval()
        return self

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.extractor(x.contiguous(memory_format=torch.channels_last))


def patch_embedding(feats: dict[str, torch.Tensor], *, neighbourhood: int = 3,
                    max_dim: int | None = None) -> torch.Tensor:
    """(B, C, h, w) patch features on the finest layer's grid (see module docstring)."""
    maps = list(feats.values())
    h, w = maps[0].shape[-2:]
    out = []
    for f in maps:
        if neighbourhood > 1:
            f = F.avg_pool2d(f, neighbourhood, stride=1, padding=neighbourhood // 2, count_include_pad=True)
        if f.shape[-2:] != (h, w):
            f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
        out.append(f)
    emb = torch.cat(out, dim=1)
    if max_dim is not None and emb.shape[1] > max_dim:  # the paper's channel reduction: adaptive average pooling
        b = emb.shape[0]
        emb = F.adaptive_avg_pool1d(emb.permute(0, 2, 3, 1).reshape(-1, 1, emb.shape[1]), max_dim)
        emb = emb.reshape(b, h, w, max_dim).permute(0, 3, 1, 2)
    return emb.contiguous()


def pooled_embedding(feats: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([f.mean(dim=(-2, -1)) for f in feats.values()], dim=1)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W), bilinear."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (B, H, W) maps (kernel 2*ceil(4 sigma)+1, reflect padding)."""
    if sigma <= 0:
        return maps
    radius = int(math.ceil(4 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    out = maps[:, None]
    h, w = out.shape[-2:]
    pad_h, pad_w = min(radius, h - 1), min(radius, w - 1)
    out = F.pad(out, (pad_w, pad_w, pad_h, pad_h), mode="reflect") if min(pad_h, pad_w) > 0 else out
    kh = k[radius - pad_h: radius + pad_h + 1] if pad_h < radius else k
    kw = k[radius - pad_w: radius + pad_w + 1] if pad_w < radius else k
    out = F.conv2d(out, (kh / kh.sum()).view(1, 1, -1, 1))
    out = F.conv2d(out, (kw / kw.sum()).view(1, 1, 1, -1))
    return out[:, 0]
