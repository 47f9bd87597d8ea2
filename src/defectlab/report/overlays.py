"""Heatmap overlays: image | ground truth | anomaly map | predicted contour, one PNG per image.

All panels are at the image's original size. The anomaly map uses one colour scale for the whole run
(``vmin``/``vmax`` from the caller), so colours compare across images; the predicted contour is the
boundary of ``map > pixel threshold`` (the detector's deployable pixel threshold).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from scipy import ndimage

from defectlab.config import atomic_path
from defectlab.runtime.colormap import heat_overlay


def mask_overlay(image: Image.Image, pred: np.ndarray, gt: np.ndarray | None = None, *,
                 alpha: float = 0.45) -> Image.Image:
    """Predicted defect pixels tinted red, the ground-truth outline in green (segmentation overlays)."""
    rgb = np.asarray(image.convert("RGB")).astype(np.float32)
    red = np.array([255.0, 0.0, 0.0])
    rgb[pred] = (1 - alpha) * rgb[pred] + alpha * red
    if gt is not None and gt.any():
        edge = gt & ~ndimage.binary_erosion(gt, iterations=max(1, min(gt.shape) // 200))
        rgb[edge] = (0.0, 255.0, 0.0)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def save_overlay(path: str | Path, image: np.ndarray, mask: np.ndarray | None, amap: np.ndarray, *,
                 vmin: float, vmax: float, pixel_threshold: float, title: str = "") -> Path:
    """Write the four-panel figure atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    h, w = amap.shape
    fig = Figure(figsize=(12, 3.4 * max(0.5, min(2.0, h / max(w, 1)))))  # no pyplot: no global backend state
    axes = fig.subplots(1, 4)
    panels = [("image", rgb), ("ground truth", rgb), ("anomaly map", heat_overlay(rgb, amap, vmin, vmax)),
              ("predicted", rgb)]
    for ax, (name, im) in zip(axes, panels, strict=True):
        ax.imshow(im)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if mask is not None and mask.any():
        axes[1].contour(mask.astype(float), levels=[0.5], colors="lime", linewidths=1.0)
    if (amap > pixel_threshold).any():
        axes[3].contour((amap > pixel_threshold).astype(float), levels=[0.5], colors="red", linewidths=1.0)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    return path
