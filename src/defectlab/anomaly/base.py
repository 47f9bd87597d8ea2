"""The anomaly-detection interface every method implements, and the types it returns.

Convention, stated once: **a higher score means more anomalous**, for image scores and pixel maps alike.

* ``AnomalyModel`` is the pure-torch core of a method (sklearn-like): ``fit(loader) -> self``,
  ``predict(images) -> AnomalyOutput``; fitted state lives in buffers so ``state_dict`` saves it.
* ``Prediction`` is what inspection code (``defectlab inspect``, the HTTP service) gets for one image,
  from a loaded detector (model + preprocessing + thresholds), at the image's own resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch


class AnomalyOutput(NamedTuple):
    scores: torch.Tensor  # (B,) image anomaly scores
    maps: torch.Tensor  # (B, H, W) pixel anomaly maps at the model's input resolution


@dataclass
class Prediction:
    """One inspected image."""

    path: str
    score: float
    threshold: float  # the deployable threshold the verdict used
    is_defect: bool  # score > threshold
    anomaly_map: np.ndarray  # (H, W) float32 at the original image size
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # x0, y0, x1, y1 (pixels, inclusive-exclusive)
    extra: dict[str, Any] = field(default_factory=dict)
