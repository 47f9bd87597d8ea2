"""The inference engine behind ``inspect`` and ``serve``: the torch Detector or its ONNX Runtime twin.

Both expose ``predict_images(list of PIL images or paths) -> list[Prediction]`` and ``info() -> dict``;
``inspect`` and ``serve`` also use, when an engine has them, ``decode_full`` / ``input_size`` /
``model_pixel_budget`` (the limits every engine shares: ``Detector``) and ``max_model_pixels``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from defectlab.errors import ConfigError
from defectlab.runtime.prediction import Prediction

ENGINES = ("torch", "onnx")
BUNDLE_FILE = "bundle.json"  # what makes a folder an inspection bundle (defectlab.verdict.bundle)


class Engine(Protocol):
    def predict_images(self, images: list[Image.Image | str | Path], *, batch_size: int = 8) -> list[Prediction]: ...

    def info(self) -> dict[str, Any]: ...


def load_engine(run: str | Path, engine: str = "torch", device: str = "auto") -> Engine:
    """Load a fitted anomaly run once (no pickle: the Detector reads state dicts + JSON), or an inspection
    bundle folder (``defectlab.verdict``: one verdict per part; its predictions' ``extra`` carries it).
    ``device``: ``auto | cpu | cuda[:N] | mps`` for the torch engine; the ONNX engine runs on the CPU, or
    on CUDA when onnxruntime has its CUDA provider (``inspect.onnx_engine.providers``)."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine '{engine}'; known: {', '.join(ENGINES)}")
    if (Path(run) / BUNDLE_FILE).is_file():  # an inspection bundle (defectlab.verdict)
        try:
            from defectlab.verdict.bundle import Bundle
        except ModuleNotFoundError as exc:  # the runtime-only install
            raise ConfigError(f"{run}: inspection bundles need the full install (pip install 'defectlab[full]'; "
                              f"missing module '{exc.name}')") from None
        return Bundle.load(run, engine, device=device)
    if engine == "onnx":
        from defectlab.inspect.onnx_engine import OnnxDetector

        return OnnxDetector.load(run, device=device)
    from defectlab.anomaly.detector import Detector

    return Detector.load(run, device=device)
