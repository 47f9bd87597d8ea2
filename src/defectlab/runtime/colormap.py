"""The heatmap colours: matplotlib's ``jet`` colour map as a 256-entry table (numpy only), and the one heat
renderer of the project (run reports, ``inspect`` heatmaps and the service).

``jet`` is piecewise linear; the table is built as matplotlib builds it and looked up as matplotlib looks it
up, so the colours are matplotlib's exactly (a test compares).
"""

from __future__ import annotations

import numpy as np

N = 256
_JET = {  # matplotlib's _jet_data: (x, value below x, value above x) per channel
    "red": ((0.0, 0.0, 0.0), (0.35, 0.0, 0.0), (0.66, 1.0, 1.0), (0.89, 1.0, 1.0), (1.0, 0.5, 0.5)),
    "green": ((0.0, 0.0, 0.0), (0.125, 0.0, 0.0), (0.375, 1.0, 1.0), (0.64, 1.0, 1.0), (0.91, 0.0, 0.0),
              (1.0, 0.0, 0.0)),
    "blue": ((0.0, 0.5, 0.5), (0.11, 1.0, 1.0), (0.34, 1.0, 1.0), (0.65, 0.0, 0.0), (1.0, 0.0, 0.0)),
}


def _channel(data: tuple[tuple[float, float, float], ...]) -> np.ndarray:
    table = np.array(data)
    x, below, above = table[:, 0] * (N - 1), table[:, 1], table[:, 2]
    xs = (N - 1) * np.linspace(0, 1, N)
    ind = np.searchsorted(x, xs)[1:-1]
    distance = (xs[1:-1] - x[ind - 1]) / (x[ind] - x[ind - 1])
    lut = np.concatenate([[above[0]], distance * (below[ind] - above[ind - 1]) + above[ind - 1], [below[-1]]])
    return np.clip(lut, 0.0, 1.0)


JET = np.stack([_channel(_JET[c]) for c in ("red", "green", "blue")], axis=1)  # (256, 3) floats in [0, 1]


def jet(norm: np.ndarray) -> np.ndarray:
    """(..., 3) float64 RGB in [0, 1] of values in [0, 1] (clipped), as ``matplotlib.colormaps["jet"]``."""
    xa = np.array(norm, copy=True)
    xa *= N
    xa[xa == N] = N - 1
    return JET.take(np.clip(xa, 0, N - 1).astype(int), axis=0)


def heat_overlay(image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float, alpha: float = 0.5, *,
                 fade: bool = False) -> np.ndarray:
    """HxWx3 uint8: the image blended with the jet-coloured map normalised to [vmin, vmax]. ``fade``: the
    blend weight grows with the score (low scores show the image through), as the inspection overlays draw."""
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    norm = np.clip((amap - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    heat = (jet(norm) * 255.0).astype(np.float32)
    weight = alpha * np.clip(norm * 2.0, 0.15, 1.0)[..., None] if fade else alpha
    mixed = rgb.astype(np.float32) * (1.0 - weight) + heat * weight
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


__all__ = ["JET", "heat_overlay", "jet"]
