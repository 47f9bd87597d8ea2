"""What inspection code (``defectlab inspect``, the HTTP service) gets for one image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Prediction:
    """One inspected image."""

    path: str
    score: float
    threshold: float  # the deployable threshold the verdict used
    is_defect: bool  # score > threshold
    anomaly_map: np.ndarray  # (H, W) float32 at the original image size
    # x0, y0, x1, y1 (pixels, inclusive-exclusive)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
