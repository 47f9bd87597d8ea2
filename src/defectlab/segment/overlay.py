"""Overlay PNGs for eyes: predicted defect pixels tinted red, the ground-truth outline in green."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def mask_overlay(image: Image.Image, pred: np.ndarray, gt: np.ndarray | None = None, *,
                 alpha: float = 0.45) -> Image.Image:
    rgb = np.asarray(image.convert("RGB")).astype(np.float32)
    red = np.array([255.0, 0.0, 0.0])
    rgb[pred] = (1 - alpha) * rgb[pred] + alpha * red
    if gt is not None and gt.any():
        edge = gt & ~ndimage.binary_erosion(gt, iterations=max(1, min(gt.shape) // 200))
        rgb[edge] = (0.0, 255.0, 0.0)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
