"""Region-pooled features: a frozen backbone's stride-16 patch features averaged over the defect's mask.

``train.input: pooled`` looks at the whole image (resized with ``train.image_size`` / ``train.resize``, as a
whole-image attempt) but describes it by the mean of one patch layer *inside the defect region* instead of
over the whole image: a small defect keeps its own features rather than being averaged away by the
background, and the backbone still sees the defect in its context. The layer is the backbone's stride-16
patch layer, the last of ``defectlab.backbones`` ``BackboneInfo.patch_layers`` (EfficientNet-Lite0
``_blocks.10``, MobileNetV2 ``features.13``, ResNets ``layer3``); the region's mask is area-resized to the
layer's grid and used as weights. An image without a region (a good image, an empty mask) gets the plain
average over the whole grid. The features are frozen, so this input takes a probe head only
(``train.probe: linear | prototype``).

The linear probe standardises the features (as every linear probe does, ``defectlab.classify.probe``).

``train.regions_from: RUN`` (an anomaly run) adds each training image a second time with the region that
run's detector finds (its map above the pixel threshold, ``detector_regions``): the regions an inspection
bundle gives the classifier at inference are coarser and often shifted against the drawn masks, and a probe
taught on both types those better. Validation and test keep the masks.

The mask travels with the image as a fourth channel of the cached uint8 tensor (0-255 = weight 0-1), so
every geometric operation (resize, flips for training features and for test-time augmentation) moves the
mask with the image, and training, evaluation and prediction share one code path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from defectlab.backbones import BACKBONES, FeatureExtractor, build_backbone
from defectlab.classify.data import ImageSet
from defectlab.data.io import load_pil
from defectlab.data.regions import Box
from defectlab.data.transforms import resize_ops
from defectlab.errors import ConfigError

EMPTY = 1e-3  # a mask whose weights sum to less than this on the feature grid counts as "no region"


def patch_layer(model_name: str) -> str:
    """The stride-16 patch layer of a backbone (``BackboneInfo.patch_layers[-1]``); ConfigError when the
    model is not a registered backbone (it has no patch layers to pool)."""
    if model_name not in BACKBONES:
        raise ConfigError(f"train.input: pooled needs a backbone with patch layers; model '{model_name}' is "
                          f"not one (known: {', '.join(sorted(BACKBONES))})")
    return build_backbone(model_name, weights=None).info.patch_layers[-1]


def masked_mean(fmap: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) features, (B, 1, H, W) weights in [0, 1] -> (B, C): the weighted mean of each map over its
    mask area-resized to (h, w); the plain mean where a mask is (nearly) empty."""
    w = F.interpolate(mask.float(), fmap.shape[-2:], mode="area")
    empty = w.sum((2, 3), keepdim=True) < EMPTY
    w = torch.where(empty, torch.ones_like(w), w)
    return (fmap * w).sum((2, 3)) / w.sum((2, 3))


class PooledBody(nn.Module):
    """(B, 4, H, W) normalised image + mask channel -> (B, C) features of ``layer`` averaged over the mask.

    ``body`` is the classifier's own body (its state dict keys stay those of the pretrained network); the
    forward pass stops at ``layer`` (``defectlab.backbones.FeatureExtractor``)."""

    def __init__(self, body: nn.Module, layer: str) -> None:
        super().__init__()
        self.body = body
        names = dict(body.named_modules())
        inner = next((p + layer for p in ("", "net.") if p + layer in names), layer)  # efficientnet: body.net
        self.layer = inner
        self._extract = [FeatureExtractor(body, [inner])]  # a list: not a submodule (no duplicate state keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Consecutive rows with the same image (the regions of one image, ``Predictor.predict_regions``)
        share one backbone pass."""
        img = x[:, :3]
        starts = [0] + [i for i in range(1, len(x)) if not torch.equal(img[i], img[i - 1])]
        if len(starts) == len(x):
            fmap = self._extract[0](img)[self.layer]
        else:
            counts = torch.tensor(np.diff(starts + [len(x)]), device=x.device)
            fmap = self._extract[0](img[starts])[self.layer].repeat_interleave(counts, dim=0)
        return masked_mean(fmap.float(), x[:, 3:4])


def make_pooled(classifier: nn.Module, model_name: str, image_size: int) -> None:
    """Turn a built classifier into a region-pooled one in place: its body becomes a :class:`PooledBody` and
    its head a fresh linear layer on the patch layer's channels."""
    body = PooledBody(classifier.body, patch_layer(model_name))
    was = body.training
    with torch.no_grad():
        side = min(image_size, 64)
        channels = body.eval()(torch.zeros(1, 4, side, side)).shape[1]
    body.train(was)
    classifier.body = body
    classifier.num_features = int(channels)
    dropout = classifier.head[0].p
    classifier.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, classifier.num_classes))


def pooled_input(image: torch.Tensor, mask: np.ndarray | torch.Tensor | None, size: int,
                 resize: str = "squash") -> torch.Tensor:
    """(3, H, W) uint8 image and its (H, W) bool/[0, 1] region mask (None: no region) -> (4, size, size)
    uint8: the resized image and, as the fourth channel, the mask resized the same way (0-255)."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    m = torch.zeros((1, h, w), dtype=torch.uint8)
    if mask is not None:
        mt = torch.as_tensor(np.asarray(mask, dtype=np.float32))
        if tuple(mt.shape) != (h, w):
            raise ValueError(f"region mask is {tuple(mt.shape)}, its image {(h, w)}")
        m[0] = (mt.clamp(0, 1) * 255).round().to(torch.uint8)
    return v2.Compose(resize_ops(size, resize))(torch.cat([image, m]))


def detector_regions(run: str | Path, paths: Sequence[str | Path], *, batch_size: int = 8) -> list[np.ndarray | None]:
    """The region an anomaly run's detector finds in each image, as an inspection bundle would hand it to a
    region-guided classifier: its map above the run's pixel threshold, (H, W) bool in the image file's
    pixels; None where no pixel passes (the bundle then classifies the whole image)."""
    from defectlab.anomaly.detector import Detector

    det = Detector.load(run, device="cpu")
    out: list[np.ndarray | None] = []
    for start in range(0, len(paths), batch_size):  # a chunk at a time: its float maps go once thresholded
        for pred in det.predict_images(list(paths[start:start + batch_size]), batch_size=batch_size):
            above = pred.anomaly_map > det.thresholds.pixel
            w, h = pred.extra["source_size"]
            if above.any() and above.shape != (h, w):  # the detector reduced a large file on load
                above = np.asarray(Image.fromarray(above).resize((w, h), Image.NEAREST))
            out.append(above if above.any() else None)
    return out


def with_detector_regions(images: ImageSet, run: str | Path, *, size: int, resize: str = "squash") -> ImageSet:
    """``images`` (pooled input: the records' own masks) followed by the same images with the regions the
    anomaly run's detector finds (``detector_regions``): a region-pooled classifier then also learns the
    regions it will be given at inference (``train.regions_from``)."""
    extra = []
    for path, region in zip(images.paths, detector_regions(run, images.paths), strict=True):
        extra.append(pooled_input(v2.functional.pil_to_tensor(load_pil(path, "RGB")), region, size, resize))
    if not extra:
        return images
    return ImageSet(torch.cat([images.images, torch.stack(extra)]), torch.cat([images.labels, images.labels]),
                    images.paths * 2)


def box_mask(box: Box | None, width: int, height: int) -> np.ndarray | None:
    """The filled ``(x, y, w, h)`` box as an (H, W) bool mask (None for None)."""
    if box is None:
        return None
    x, y, bw, bh = (int(round(v)) for v in box)
    out = np.zeros((height, width), dtype=bool)
    out[max(0, y):max(0, y + max(1, bh)), max(0, x):max(0, x + max(1, bw))] = True
    return out


__all__ = ["PooledBody", "box_mask", "detector_regions", "make_pooled", "masked_mean", "patch_layer",
           "pooled_input", "with_detector_regions"]
