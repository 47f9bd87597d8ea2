"""The inference engine behind ``inspect`` and ``serve``: the torch Detector or its ONNX Runtime twin.

Both expose ``predict_images(list of PIL images or paths) -> list[Prediction]`` and ``info() -> dict``;
``inspect`` and ``serve`` also use, when an engine has them, ``decode_full`` / ``input_size`` /
``model_pixel_budget`` (the limits every engine shares: ``Detector``) and ``max_model_pixels``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from defectlab.anomaly.base import Prediction
from defectlab.errors import ConfigError

ENGINES = ("torch", "onnx")


class Engine(Protocol):
    def predict_images(self, images: list[Image.Image | str | Path], *, batch_size: int = 8) -> list[Prediction]: ...

    def info(self) -> dict[str, Any]: ...


def load_engine(run: str | Path, engine: str = "torch") -> Engine:
    """Load a fitted anomaly run once (no pickle: the Detector reads state dicts + JSON)."""
    if engine == "torch":
        from defectlab.anomaly.detector import Detector

        return Detector.load(run)
    if engine == "onnx":
        from defectlab.export.onnx import OnnxDetector

        return OnnxDetector.load(run)
    raise ConfigError(f"unknown engine '{engine}'; known: {', '.join(ENGINES)}")
