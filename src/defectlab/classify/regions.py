"""Region-guided inputs: classify a crop around the defect instead of the whole, resized image.

Whole-image resizing to 64-128 px erases the small defects that separate types; the defect's region is
known (its mask when training, the anomaly map's region or a mask at inference), so a region-guided
attempt (``train.input: region``) cuts a square around it at the image's own resolution and resizes only
that crop to ``image_size``. The same function cuts the crops for training, for evaluation and for
prediction (``Predictor.predict_regions``, the inspection bundle), so they are always the same crops.

Geometry: a region box is COCO ``(x, y, w, h)`` in image pixels (``defectlab.data.regions``). The crop is
the square of side ``max(w, h) * (1 + 2 * margin)`` (at least ``min_side`` pixels, at most the image's
shorter side) centred on the box and shifted inside the image; it is returned as ``(x0, y0, x1, y1)``
(``x1``, ``y1`` exclusive) with :func:`to_image` mapping points of the resized crop back to image pixels.
An image without a region (a good image, an empty mask) is cropped around its centre, with side
``min(H, W) / 2``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from defectlab.data.io import load_mask, load_pil
from defectlab.data.regions import Box, mask_box

CropBox = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), image pixels


def crop_box(box: Box | None, width: int, height: int, *, margin: float = 0.25, min_side: int = 48) -> CropBox:
    """The square crop around ``box`` (or the image centre when None), inside a ``width x height`` image."""
    limit = min(width, height)
    if box is None:
        side = max(1, limit // 2)
        cx, cy = width / 2.0, height / 2.0
    else:
        x, y, w, h = box
        side = int(round(max(w, h) * (1.0 + 2.0 * margin)))
        cx, cy = x + w / 2.0, y + h / 2.0
    side = min(limit, max(side, min_side, 1))
    x0 = int(round(cx - side / 2.0))
    y0 = int(round(cy - side / 2.0))
    x0 = min(max(0, x0), width - side)
    y0 = min(max(0, y0), height - side)
    return x0, y0, x0 + side, y0 + side


def to_image(points: np.ndarray, crop: CropBox, size: int) -> np.ndarray:
    """(N, 2) ``(x, y)`` points of a ``size x size`` resized crop -> image pixel coordinates."""
    x0, y0, x1, y1 = crop
    scale = np.array([(x1 - x0) / size, (y1 - y0) / size])
    return np.asarray(points, dtype=float) * scale + np.array([x0, y0], dtype=float)


def mask_region(mask: np.ndarray) -> Box | None:
    """The box around every defect pixel of a mask (None when the mask is empty)."""
    return mask_box(mask) if mask.any() else None


def cut(image: torch.Tensor, crop: CropBox, size: int) -> torch.Tensor:
    """(3, H, W) uint8 image -> (3, size, size) uint8 crop (antialiased resize)."""
    x0, y0, x1, y1 = crop
    return v2.functional.resize(image[:, y0:y1, x0:x1], [size, size], antialias=True)


def region_crop(image: torch.Tensor, box: Box | None, size: int, *, margin: float = 0.25,
                min_side: int = 48) -> tuple[torch.Tensor, CropBox]:
    """One image's crop around ``box`` (the function training, evaluation and prediction share)."""
    crop = crop_box(box, int(image.shape[-1]), int(image.shape[-2]), margin=margin, min_side=min_side)
    return cut(image, crop, size), crop


def decode_region(path: str | Path, mask_path: str | Path | None, size: int, *, margin: float = 0.25,
                  min_side: int = 48) -> tuple[torch.Tensor, CropBox]:
    """A file's crop around its mask's region (image centre without a mask)."""
    image = v2.functional.pil_to_tensor(load_pil(path, "RGB"))
    box = None
    if mask_path is not None:
        box = mask_region(load_mask(mask_path, (int(image.shape[-1]), int(image.shape[-2]))))
    return region_crop(image, box, size, margin=margin, min_side=min_side)


__all__ = ["CropBox", "crop_box", "cut", "decode_region", "mask_region", "region_crop", "to_image"]
