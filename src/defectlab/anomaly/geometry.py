"""Mapping anomaly maps from the model's input grid back onto the original image.

The inverse of ``defectlab.data.transforms.resize_ops`` for each resize mode:

* ``squash`` / ``native``: resize the map to the original (H0, W0);
* ``letterbox``: cut the padding away, then resize;
* ``crop``: the map covers the centre crop only; it is placed on the resized image's canvas (the rest
  filled with the map's minimum: never seen, never flagged), then resized.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from defectlab.errors import ConfigError


def letterbox_box(orig_hw: tuple[int, int], size_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image inside the letterboxed (H, W) input (same rounding as
    ``transforms._Letterbox``)."""
    (h0, w0), (h, w) = orig_hw, size_hw
    scale = min(h / h0, w / w0)
    nh, nw = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    return (h - nh) // 2, (w - nw) // 2, nh, nw


def _resize(m: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(m.shape) == tuple(hw):
        return m
    return F.interpolate(m[None, None], size=hw, mode="bilinear", align_corners=False)[0, 0]


def map_to_original(amap: torch.Tensor | np.ndarray, orig_hw: tuple[int, int], mode: str) -> np.ndarray:
    """(H, W) map at the model's input size -> (H0, W0) float32 map on the original image."""
    m = torch.as_tensor(np.asarray(amap, dtype=np.float32))
    h, w = m.shape
    h0, w0 = orig_hw
    if mode in ("squash", "native"):
        out = _resize(m, (h0, w0))
    elif mode == "letterbox":
        top, left, nh, nw = letterbox_box((h0, w0), (h, w))
        out = _resize(m[top:top + nh, left:left + nw], (h0, w0))
    elif mode == "crop":
        short = min(h, w)
        rh, rw = (short, int(short * w0 / h0)) if h0 <= w0 else (int(short * h0 / w0), short)
        top, left = int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0))
        canvas = torch.full((max(rh, h), max(rw, w)), float(m.min()))
        canvas[max(top, 0):max(top, 0) + h, max(left, 0):max(left, 0) + w] = m
        out = _resize(canvas[:rh, :rw], (h0, w0))
    else:
        raise ConfigError(f"unknown resize mode '{mode}'")
    return out.numpy().astype(np.float32)
