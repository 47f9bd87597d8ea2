"""Mapping anomaly maps from the model's input grid back onto the original image (numpy only).

The inverse of ``defectlab.data.transforms.resize_ops`` for each resize mode:

* ``squash`` / ``native``: resize the map to the original (H0, W0);
* ``letterbox``: cut the padding away, then resize;
* ``crop``: the map covers the centre crop only; it is placed on the resized image's canvas (the rest
  filled with the map's minimum: never seen, never flagged), then resized.

The resize is bilinear with half-pixel centres (``align_corners=False``), computed as torch's CPU kernels
compute it (float32 weights, fused multiply-adds, the small-output kernel's order for outputs of at most
128 px height + width), so every engine gets the maps the torch engine always got: a test compares it
with ``torch.nn.functional.interpolate`` bit for bit.
"""

from __future__ import annotations

import numpy as np

from defectlab.errors import ConfigError


def letterbox_box(orig_hw: tuple[int, int], size_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image inside the letterboxed (H, W) input (same rounding as
    ``transforms._Letterbox``)."""
    (h0, w0), (h, w) = orig_hw, size_hw
    scale = min(h / h0, w / w0)
    nh, nw = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    return (h - nh) // 2, (w - nw) // 2, nh, nw


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and float32 weights (w0, w1) of each output position along one axis."""
    scale = np.float32(n_in / n_out)
    centre = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
    src = np.maximum((np.float64(scale) * centre - 0.5).astype(np.float32), np.float32(0.0))  # one rounding
    i0 = src.astype(np.int64)
    w1 = src - i0.astype(np.float32)
    return i0, np.minimum(i0 + 1, n_in - 1), np.float32(1.0) - w1, w1


def _mix(w0: np.ndarray, a: np.ndarray, w1: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 ``w0 * a + w1 * b``, rounded as a fused multiply-add of ``w0 * a`` onto the rounded ``w1 * b``
    (float64 holds the product exactly)."""
    return (w0.astype(np.float64) * a + (w1 * b).astype(np.float64)).astype(np.float32)


def resize_map(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(h, w) float32 map -> (H, W), bilinear with half-pixel centres."""
    m = np.asarray(m, dtype=np.float32)
    if tuple(m.shape) == tuple(hw):
        return m
    y0, y1, a0, a1 = _taps(m.shape[0], hw[0])
    x0, x1, b0, b1 = _taps(m.shape[1], hw[1])
    if hw[0] + hw[1] <= 128:  # torch's kernel for small outputs: four corner weights, chained
        a0, a1 = a0[:, None], a1[:, None]
        top, bottom = m[y0], m[y1]
        out = _mix(a0 * b0, top[:, x0], a0 * b1, top[:, x1])
        out = _mix(a1 * b0, bottom[:, x0], np.float32(1.0), out)
        return _mix(a1 * b1, bottom[:, x1], np.float32(1.0), out)
    rows = _mix(b0, m[:, x0], b1, m[:, x1])  # every source row at the output's columns
    return _mix(a0[:, None], rows[y0], a1[:, None], rows[y1])


def map_to_original(amap: np.ndarray, orig_hw: tuple[int, int], mode: str) -> np.ndarray:
    """(H, W) map at the model's input size -> (H0, W0) float32 map on the original image (a torch tensor
    on any device is taken too)."""
    if hasattr(amap, "detach"):  # a torch tensor, perhaps on a GPU
        amap = amap.detach().cpu().numpy()
    m = np.asarray(amap, dtype=np.float32)
    h, w = m.shape
    h0, w0 = orig_hw
    if mode in ("squash", "native"):
        out = resize_map(m, (h0, w0))
    elif mode == "letterbox":
        top, left, nh, nw = letterbox_box((h0, w0), (h, w))
        out = resize_map(m[top:top + nh, left:left + nw], (h0, w0))
    elif mode == "crop":
        short = min(h, w)
        rh, rw = (short, int(short * w0 / h0)) if h0 <= w0 else (int(short * h0 / w0), short)
        top, left = int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0))
        canvas = np.full((max(rh, h), max(rw, w)), m.min(), dtype=np.float32)
        canvas[max(top, 0):max(top, 0) + h, max(left, 0):max(left, 0) + w] = m
        out = resize_map(canvas[:rh, :rw], (h0, w0))
    else:
        raise ConfigError(f"unknown resize mode '{mode}'")
    return np.ascontiguousarray(out, dtype=np.float32)


__all__ = ["letterbox_box", "map_to_original", "resize_map"]
