"""A deployable detector: a fitted model + its preprocessing + thresholds + what it was trained on.

    >>> det = Detector.load("runs/tile")                  # refuses a modified or truncated model file
    >>> preds = det.predict_images(["a.png", pil_image])   # list[Prediction], maps at each image's size
    >>> det.info()                                         # method, backbone, weights, size, thresholds, data

On disk, in the run folder: ``model.safetensors`` (every tensor: network weights and fitted buffers; no
pickle) and ``detector.json`` (method name and config, preprocessing, thresholds, training summary, and
the sha256 of the tensor file, checked before loading). Both written atomically.

Thresholds (``Thresholds``): ``image`` is the deployable one, from good images only: the ``quantile``
(default 0.99) of the scores of held-out good training images (never in the memory bank / not trained
on); ``pixel`` the same quantile of those images' map maxima, used to draw regions (boxes, contours).
``image_f1``/``pixel_f1``, F1-optimal on a labelled test set, are for reporting only.
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
import torch
from PIL import Image
from scipy import ndimage

from defectlab.anomaly.base import AnomalyModel, AnomalyOutput, Prediction
from defectlab.anomaly.geometry import map_to_original
from defectlab.config import atomic_path, to_dict, write_json
from defectlab.data.io import SOURCE_SIZE_KEY, Decoded, ImageRefused, decode_for_model
from defectlab.data.transforms import PairTransform, as_hw, standardize_intensity
from defectlab.errors import BadInputError, DefectLabError

FORMAT = "defectlab-anomaly-detector/1"
MODEL_FILE = "model.safetensors"
META_FILE = "detector.json"


@dataclass
class Preprocess:
    image_size: tuple[int, int]  # (H, W) the model sees (not used by "native")
    resize: str  # "native" | "squash" | "letterbox" | "crop" (see defectlab.data.transforms)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mode: str = "RGB"  # images are decoded to this PIL mode first (grayscale is replicated to RGB)
    scale: float = 1.0  # "native": every image is resized by this one factor (aspect ratio and scale kept)
    standardize: bool = False  # per-image intensity standardisation first (defectlab.data.transforms)

    @property
    def variable_size(self) -> bool:
        return self.resize == "native"

    def transform(self) -> PairTransform | NativeTransform:
        if self.resize == "native":
            return NativeTransform(self.scale, mean=self.mean, std=self.std, standardize=self.standardize)
        return PairTransform(self.image_size, resize=self.resize, mean=self.mean, std=self.std,
                             standardize=self.standardize)


def same_size_runs(sizes: Sequence[Any], batch_size: int) -> list[list[int]]:
    """Indices in order, cut into batches of at most ``batch_size`` wherever the size changes."""
    runs: list[list[int]] = []
    for i, size in enumerate(sizes):
        if runs and sizes[runs[-1][0]] == size and len(runs[-1]) < batch_size:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


class NativeTransform:
    """``(PIL, mask | None) -> (3xhxw, 1xhxw)``: one fixed scale factor for all images, no padding, so a
    pixel keeps the same physical size in every image (one camera), whatever the crop's shape."""

    def __init__(self, scale: float, *, mean: Sequence[float], std: Sequence[float],
                 standardize: bool = False) -> None:
        self.scale, self.mean, self.std, self.standardize = scale, tuple(mean), tuple(std), standardize

    def __call__(self, image: Image.Image, mask: np.ndarray | None,
                 size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``size``: the (w, h) to resize to when ``image`` was reduced on load (else scale x its size)."""
        w, h = image.size
        if mask is None:
            mask = np.zeros((h, w), dtype=bool)
        size = size or (max(16, round(w * self.scale)), max(16, round(h * self.scale)))
        if size != (w, h):
            image = image.resize(size, Image.BILINEAR)
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        if self.standardize:
            x = standardize_intensity(x)
        x = (x - torch.tensor(self.mean).view(3, 1, 1)) / torch.tensor(self.std).view(3, 1, 1)
        return x.contiguous(), torch.from_numpy(np.ascontiguousarray(mask)).float()[None]


@dataclass
class Thresholds:
    image: float  # deployable: score > image means defect
    pixel: float  # deployable: map > pixel marks a defect region
    rule: str  # how they were set, e.g. "quantile 0.99 of 71 held-out good images"
    image_f1: float | None = None  # F1-optimal on a labelled test set (reporting only)
    pixel_f1: float | None = None


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


def boxes_from_map(amap: np.ndarray, threshold: float) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of the 8-connected regions of ``amap > threshold``, largest first."""
    labels, n = ndimage.label(amap > threshold, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    sizes = ndimage.sum_labels(np.ones_like(amap), labels, index=np.arange(1, n + 1))
    boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels)]
    return [boxes[i] for i in np.argsort(-sizes, kind="stable")]


def scale_boxes(boxes: list[tuple[int, int, int, int]], fx: float, fy: float,
                limit: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Boxes scaled by (fx, fy), outward to whole pixels, clipped to ``limit`` = (w, h)."""
    return [(int(x0 * fx), int(y0 * fy), min(limit[0], math.ceil(x1 * fx)), min(limit[1], math.ceil(y1 * fy)))
            for x0, y0, x1, y1 in boxes]


class Detector:
    """The model, its preprocessing and thresholds. ``max_model_pixels``: the largest input (w x h, as the
    model sees it) accepted; None means ``MODEL_PIXELS_FACTOR`` x the fitted input area."""

    MODEL_PIXELS_FACTOR = 4

    def __init__(self, model: AnomalyModel, method: str, preprocess: Preprocess, thresholds: Thresholds,
                 training: dict[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.method = method
        self.preprocess = preprocess
        self.thresholds = thresholds
        self.training = dict(training or {})
        self.max_model_pixels: int | None = None
        self.model_sha256: str | None = None  # of model.safetensors, set by load()
        self._transform = preprocess.transform()

    # -- input geometry (shared by every engine, so they accept and refuse the same images) ----------------
    @property
    def min_input_side(self) -> int:
        """Smallest model-side side: the map smoothing pads by ceil(4 sigma) (reflect), in both engines."""
        sigma = float(getattr(self.model.config, "sigma", 0.0) or 0.0)
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

    # -- inference ------------------------------------------------------------------------------------
    def predict_tensor(self, images: torch.Tensor) -> AnomalyOutput:
        return self.model.predict(images)

    def decode(self, source: str | Path | bytes, **kwargs: Any) -> Image.Image:
        """A file (or bytes) decoded for this model (``defectlab.data.io.decode_for_model``)."""
        return self.decode_full(source, **kwargs).image

    def decode_full(self, source: str | Path | bytes, **kwargs: Any) -> Decoded:
        """As ``decode``, with the file's own size; images over the model's pixel budget reduced on load."""
        kwargs.setdefault("max_work_pixels", self.model_pixel_budget)
        return decode_for_model(source, fit=self.input_size, mode=self.preprocess.mode, **kwargs)

    def _tensor(self, pil: Image.Image, name: str) -> torch.Tensor:
        src = tuple(pil.info.get(SOURCE_SIZE_KEY, pil.size))
        try:
            size = self.input_size(*src)
        except ImageRefused as exc:
            raise ImageRefused(name, exc.problem, exc.status) from None
        if self.preprocess.variable_size:
            return self._transform(pil, None, size if src != pil.size else None)[0]  # type: ignore[call-arg]
        return self._transform(pil, None)[0]

    def predict_images(self, images: Sequence[Image.Image | str | Path], *,
                       batch_size: int = 8) -> list[Prediction]:
        """One ``Prediction`` per image (PIL images or paths). Boxes are in the image file's pixels; the map
        is at the decoded image's size (a large file is reduced on load: ``Detector.decode``)."""
        out: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            pils, names = [], []
            for i, im in enumerate(chunk):
                if isinstance(im, Image.Image):
                    pils.append(im.convert(self.preprocess.mode))
                    names.append(getattr(im, "filename", "") or f"<image {start + i}>")
                else:
                    pils.append(self.decode(im))
                    names.append(str(im))
            tensors = [self._tensor(p, n) for p, n in zip(pils, names, strict=True)]
            scores, maps = [], []
            for run in same_size_runs([t.shape for t in tensors], batch_size):  # "native": sizes differ
                res = self.predict_tensor(torch.stack([tensors[k] for k in run]))
                scores += res.scores.tolist()
                maps += list(res.maps)
            for name, pil, score, amap in zip(names, pils, scores, maps, strict=True):
                src = tuple(pil.info.get(SOURCE_SIZE_KEY, pil.size))
                full = map_to_original(amap, (pil.height, pil.width), self.preprocess.resize)
                is_defect = bool(score > self.thresholds.image)
                boxes = boxes_from_map(full, self.thresholds.pixel) if is_defect else []
                if src != pil.size:  # reduced on load: boxes in the file's pixels
                    boxes = scale_boxes(boxes, src[0] / pil.width, src[1] / pil.height, src)
                out.append(Prediction(name, float(score), self.thresholds.image, is_defect, full, boxes,
                                      {"pixel_threshold": self.thresholds.pixel, "method": self.method,
                                       "source_size": src}))
        return out

    # -- description ----------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        cfg = to_dict(self.model.config)
        return {
            "method": self.method,
            "backbone": cfg.get("backbone"),
            "weights": self.training.get("weights") or self.model.summary().get("backbone_weights", cfg.get("weights")),
            "image_size": list(self.preprocess.image_size),
            "resize": self.preprocess.resize,
            "mean": list(self.preprocess.mean),
            "std": list(self.preprocess.std),
            "standardize": self.preprocess.standardize,
            "thresholds": asdict(self.thresholds),
            "training": self.training,
            "config": cfg,
            "model": self.model.summary(),
            "model_sha256": self.model_sha256,
            "min_input_side": self.min_input_side,
            "max_model_pixels": self.model_pixel_budget,
            "scale": self.preprocess.scale if self.preprocess.variable_size else None,
        }

    # -- persistence ----------------------------------------------------------------------------------
    def save(self, run_dir: str | Path, *, tensors: bool = True) -> Path:
        """Write ``model.safetensors`` (unless ``tensors=False``: only the JSON, e.g. new thresholds) and
        ``detector.json``, each atomically."""
        from safetensors.torch import save_file

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if tensors:
            state = {k: v.detach().cpu().contiguous().clone() for k, v in self.model.state_dict().items()}
            with atomic_path(run_dir / MODEL_FILE) as tmp:
                save_file(state, str(tmp))
                digest = sha256_file(tmp)
        else:
            digest = json.loads((run_dir / META_FILE).read_text())["model_sha256"]
        meta = {"format": FORMAT, "method": self.method, "config": to_dict(self.model.config),
                "preprocess": asdict(self.preprocess), "thresholds": asdict(self.thresholds),
                "training": self.training, "model_summary": self.model.summary(),
                "model_file": MODEL_FILE, "model_sha256": digest}
        write_json(run_dir / META_FILE, meta)
        return run_dir

    @classmethod
    def load(cls, run_dir: str | Path) -> Detector:
        from safetensors.torch import load_file

        from defectlab.anomaly import build_model

        run_dir = Path(run_dir)
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
                                            f"(sha256 {digest[:12]}..., expected {str(meta.get('model_sha256'))[:12]}...)"
                                            "; refusing to load it")
        try:
            state = load_file(str(model_path))
            model = build_model(meta["method"], meta["config"], pretrained=False)
            model.load_state_dict(state, strict=True)
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
            det = cls(model, meta["method"], preprocess, thresholds, meta.get("training", {}))
            det.model_sha256 = digest
            return det
        except DefectLabError:
            raise
        except Exception as exc:  # noqa: BLE001 - a run folder is data: any failure to restore it is one line
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise BadInputError(run_dir, f"cannot restore the detector ({type(exc).__name__}: {first})") \
                from None


__all__ = ["Detector", "Preprocess", "Thresholds", "boxes_from_map", "inside_run", "scale_boxes", "FORMAT",
           "MODEL_FILE", "META_FILE"]
