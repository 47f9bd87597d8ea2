"""A detector without its model: the run folder's description, the input geometry, decoding, the model
input and the way from the model's output to a ``Prediction`` (numpy and Pillow only).

``DetectorCore`` is what every engine shares, so they accept and refuse the same images and turn maps
into the same boxes: the torch engine (``defectlab.anomaly.detector.Detector``) adds the torch model and
its transforms, the ONNX engine (``defectlab.inspect.onnx_engine.OnnxDetector``) an onnxruntime session.
A subclass implements ``model_input`` (one decoded image -> its model input) and ``score_inputs`` (a list
of same-size inputs -> image scores and maps at the model's input size).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from defectlab.data.io import SOURCE_SIZE_KEY, Decoded, ImageRefused, decode_for_model
from defectlab.errors import BadInputError, DefectLabError
from defectlab.runtime.geometry import map_to_original
from defectlab.runtime.prediction import Prediction
from defectlab.runtime.preprocess import Preprocess, as_hw, to_array
from defectlab.runtime.regions import boxes_from_map, scale_boxes

FORMAT = "defectlab-anomaly-detector/1"
MODEL_FILE = "model.safetensors"
META_FILE = "detector.json"


@dataclass
class Thresholds:
    image: float  # deployable: score > image means defect
    pixel: float  # deployable: map > pixel marks a defect region
    rule: str  # how they were set, e.g. "quantile 0.99 of 71 held-out good images"
    image_f1: float | None = None  # F1-optimal on a labelled test set (reporting only)
    pixel_f1: float | None = None
    false_alarm: float | None = None  # the target false-alarm rate on good parts ``image`` was set for
    expected_false_alarm: float | None = None  # its out-of-sample estimate (defectlab.anomaly.threshold)
    false_alarm_interval: list[float] | None = None  # 90% group-bootstrap interval of that estimate
    holdout: str | None = None  # how the held-out good images were chosen


def same_size_runs(sizes: Sequence[Any], batch_size: int) -> list[list[int]]:
    """Indices in order, cut into batches of at most ``batch_size`` wherever the size changes."""
    runs: list[list[int]] = []
    for i, size in enumerate(sizes):
        if runs and sizes[runs[-1][0]] == size and len(runs[-1]) < batch_size:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def inside_run(run_dir: Path, rel: Any, described_in: Path) -> Path:
    """``run_dir / rel`` when it is a relative path that stays inside the run folder (links resolved);
    a run folder is data, so a path that leaves it is refused."""
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute():
        raise BadInputError(described_in, f"invalid file name {rel!r}: must be a path inside the run folder")
    path = run_dir / rel
    if not path.resolve().is_relative_to(run_dir.resolve()):
        raise BadInputError(described_in, f"file name {rel!r} points outside the run folder; not followed")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_run(run_dir: Path) -> tuple[dict[str, Any], Path, str]:
    """(detector.json, model file, its sha256) of a run folder; refuses a missing, foreign, modified or
    truncated one with one line."""
    meta_path = run_dir / META_FILE
    if not meta_path.is_file():
        raise BadInputError(run_dir, f"not a detector run folder (no {META_FILE}; fit one with "
                                     "'defectlab anomaly fit')")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(meta_path, f"unreadable detector description ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BadInputError(meta_path, f"unknown detector format (expected {FORMAT})")
    model_path = inside_run(run_dir, meta.get("model_file", MODEL_FILE), meta_path)
    if not model_path.is_file():
        raise BadInputError(model_path, "model file missing")
    digest = sha256_file(model_path)
    if digest != meta.get("model_sha256"):
        raise BadInputError(model_path, "checksum mismatch: the model file was modified or truncated "
                                        f"(sha256 {digest[:12]}..., "
                                        f"expected {str(meta.get('model_sha256'))[:12]}...)"
                                        "; refusing to load it")
    return meta, model_path, digest


def run_parts(meta: dict[str, Any]) -> tuple[Preprocess, Thresholds]:
    """The preprocessing and thresholds of a detector.json (ValueError/KeyError/TypeError when invalid)."""
    pre = meta["preprocess"]
    preprocess = Preprocess(as_hw(pre["image_size"]), pre["resize"], tuple(pre["mean"]), tuple(pre["std"]),
                            pre.get("mode", "RGB"), float(pre.get("scale", 1.0)),
                            bool(pre.get("standardize", False)))
    thresholds = Thresholds(**meta["thresholds"])
    for name in ("image", "pixel"):
        value = getattr(thresholds, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"threshold '{name}' must be a finite number, got {value!r}")
    if not (math.isfinite(preprocess.scale) and preprocess.scale > 0):
        raise ValueError(f"preprocess scale must be a positive number, got {preprocess.scale}")
    return preprocess, thresholds


def restore_error(run_dir: Path, exc: Exception) -> DefectLabError:
    """A run folder is data: any failure to restore it is one line."""
    if isinstance(exc, DefectLabError):
        return exc
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return BadInputError(run_dir, f"cannot restore the detector ({type(exc).__name__}: {first})")


class DetectorCore:
    """A detector's preprocessing, thresholds, limits and post-processing. ``max_model_pixels``: the largest
    input (w x h, as the model sees it) accepted; None means ``MODEL_PIXELS_FACTOR`` x the fitted input area.
    ``config`` / ``summary``: the method's config and fitted-state summary (as in detector.json)."""

    MODEL_PIXELS_FACTOR = 4

    def __init__(self, method: str, preprocess: Preprocess, thresholds: Thresholds,
                 training: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                 summary: dict[str, Any] | None = None) -> None:
        self.method = method
        self.preprocess = preprocess
        self.thresholds = thresholds
        self.training = dict(training or {})
        self.max_model_pixels: int | None = None
        self.model_sha256: str | None = None  # of model.safetensors, set by load()
        self._config, self._summary = dict(config or {}), dict(summary or {})

    def model_config(self) -> dict[str, Any]:
        return self._config

    def model_summary(self) -> dict[str, Any]:
        return self._summary

    # -- input geometry (shared by every engine, so they accept and refuse the same images) ----------------
    @property
    def min_input_side(self) -> int:
        """Smallest model-side side: the map smoothing pads by ceil(4 sigma) (reflect), in both engines."""
        sigma = float(self.model_config().get("sigma", 0.0) or 0.0)
        return math.ceil(4 * sigma) + 1 if sigma > 0 else 1

    @property
    def model_pixel_budget(self) -> int:
        h, w = self.preprocess.image_size
        return int(self.max_model_pixels or self.MODEL_PIXELS_FACTOR * h * w)

    def model_input_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) the model sees for an image of ``width`` x ``height`` (``native``: one scale factor)."""
        if self.preprocess.variable_size:
            s = self.preprocess.scale
            return max(1, round(width * s)), max(1, round(height * s))
        h, w = self.preprocess.image_size
        return w, h

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """``model_input_size`` after the checks every engine shares: at least ``min_input_side`` per side,
        at most ``model_pixel_budget`` pixels (memory and time follow the model input); else ImageRefused."""
        w, h = self.model_input_size(width, height)
        where = f"{width}x{height} px"
        if self.preprocess.variable_size and (w, h) != (width, height):
            where += f", {w}x{h} for the model (scale {self.preprocess.scale:.4g})"
        if min(w, h) < self.min_input_side:
            raise ImageRefused("<image>", f"image too small: {where}; the model needs at least "
                                          f"{self.min_input_side} px per side", 422)
        if w * h > self.model_pixel_budget:
            raise ImageRefused("<image>", f"image too large for this model: {where} = {w * h} model pixels; "
                                          f"the limit is {self.model_pixel_budget}", 413)
        return w, h

    def decode(self, source: str | Path | bytes, **kwargs: Any) -> Image.Image:
        """A file (or bytes) decoded for this model (``defectlab.data.io.decode_for_model``)."""
        return self.decode_full(source, **kwargs).image

    def decode_full(self, source: str | Path | bytes, **kwargs: Any) -> Decoded:
        """As ``decode``, with the file's own size; images over the model's pixel budget reduced on load."""
        kwargs.setdefault("max_work_pixels", self.model_pixel_budget)
        return decode_for_model(source, fit=self.input_size, mode=self.preprocess.mode, **kwargs)

    # -- inference ------------------------------------------------------------------------------------
    def checked_size(self, pil: Image.Image, name: str) -> tuple[int, int] | None:
        """The ``native`` (w, h) to resize a decoded image to when it was reduced on load (else None: the
        transform's own size); refuses images over the limits (``input_size``)."""
        src = tuple(pil.info.get(SOURCE_SIZE_KEY, pil.size))
        try:
            size = self.input_size(*src)
        except ImageRefused as exc:
            raise ImageRefused(name, exc.problem, exc.status) from None
        return size if self.preprocess.variable_size and src != pil.size else None

    def model_input(self, pil: Image.Image, name: str) -> Any:
        """The model input of one decoded image: here a float32 (3, H, W) array."""
        return to_array(pil, self.preprocess, self.checked_size(pil, name))

    def score_inputs(self, inputs: list[Any]) -> tuple[list[float], list[np.ndarray]]:
        """Image scores and (H, W) float32 maps of same-size model inputs."""
        raise NotImplementedError

    def prepare(self, chunk: Sequence[Image.Image | str | Path], start: int = 0
                ) -> tuple[list[str], list[Image.Image], list[Any]]:
        """(names, decoded images, model inputs) of PIL images or paths; ``start`` numbers unnamed images."""
        pils, names = [], []
        for i, im in enumerate(chunk):
            if isinstance(im, Image.Image):
                pils.append(im.convert(self.preprocess.mode))
                names.append(getattr(im, "filename", "") or f"<image {start + i}>")
            else:
                pils.append(self.decode(im))
                names.append(str(im))
        inputs = [self.model_input(p, n) for p, n in zip(pils, names, strict=True)]
        return names, pils, inputs

    def predict_images(self, images: Sequence[Image.Image | str | Path], *,
                       batch_size: int = 8) -> list[Prediction]:
        """One ``Prediction`` per image (PIL images or paths). Boxes are in the image file's pixels; the map
        is at the decoded image's size (a large file is reduced on load: ``decode``)."""
        out: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            names, pils, inputs = self.prepare(images[start:start + batch_size], start)
            scores: list[float] = []
            maps: list[np.ndarray] = []
            for run in same_size_runs([tuple(x.shape) for x in inputs], batch_size):  # "native": sizes differ
                s, m = self.score_inputs([inputs[k] for k in run])
                scores += s
                maps += m
            out += [self.prediction(*args) for args in zip(names, pils, scores, maps, strict=True)]
        return out

    def prediction(self, name: str, pil: Image.Image, score: float, amap: np.ndarray) -> Prediction:
        """The map back on the decoded image, the verdict, and the boxes in the file's pixels."""
        src = tuple(pil.info.get(SOURCE_SIZE_KEY, pil.size))
        full = map_to_original(amap, (pil.height, pil.width), self.preprocess.resize)
        is_defect = bool(score > self.thresholds.image)
        boxes = boxes_from_map(full, self.thresholds.pixel) if is_defect else []
        if src != pil.size:  # reduced on load: boxes in the file's pixels
            boxes = scale_boxes(boxes, src[0] / pil.width, src[1] / pil.height, src)
        extra = {"pixel_threshold": self.thresholds.pixel, "method": self.method, "source_size": src}
        return Prediction(name, float(score), self.thresholds.image, is_defect, full, boxes, extra)

    # -- description ----------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        cfg, summary = self.model_config(), self.model_summary()
        return {
            "method": self.method,
            "backbone": cfg.get("backbone"),
            "weights": self.training.get("weights") or summary.get("backbone_weights", cfg.get("weights")),
            "image_size": list(self.preprocess.image_size),
            "resize": self.preprocess.resize,
            "mean": list(self.preprocess.mean),
            "std": list(self.preprocess.std),
            "standardize": self.preprocess.standardize,
            "thresholds": asdict(self.thresholds),
            "training": self.training,
            "config": cfg,
            "model": summary,
            "model_sha256": self.model_sha256,
            "min_input_side": self.min_input_side,
            "max_model_pixels": self.model_pixel_budget,
            "scale": self.preprocess.scale if self.preprocess.variable_size else None,
        }

    @classmethod
    def read(cls, run_dir: str | Path) -> DetectorCore:
        """The core of a run folder (its model file's checksum checked, its model not loaded)."""
        run_dir = Path(run_dir)
        meta, _, digest = read_run(run_dir)
        try:
            preprocess, thresholds = run_parts(meta)
            core = DetectorCore(str(meta["method"]), preprocess, thresholds, meta.get("training", {}),
                                meta.get("config"), meta.get("model_summary"))
        except Exception as exc:  # noqa: BLE001 - one line
            raise restore_error(run_dir, exc) from None
        core.model_sha256 = digest
        return core


__all__ = ["DetectorCore", "FORMAT", "META_FILE", "MODEL_FILE", "Thresholds", "inside_run", "read_run",
           "restore_error", "run_parts", "same_size_runs", "sha256_file"]
