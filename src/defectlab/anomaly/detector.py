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
from defectlab.data.io import load_pil
from defectlab.data.transforms import PairTransform, as_hw, standardize_intensity
from defectlab.errors import BadInputError

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

    def __call__(self, image: Image.Image, mask: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        w, h = image.size
        if mask is None:
            mask = np.zeros((h, w), dtype=bool)
        size = (max(16, round(w * self.scale)), max(16, round(h * self.scale)))
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


class Detector:
    min_input_side = 1  # smallest preprocessed height/width the model step takes (an engine may need more)

    def __init__(self, model: AnomalyModel, method: str, preprocess: Preprocess, thresholds: Thresholds,
                 training: dict[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.method = method
        self.preprocess = preprocess
        self.thresholds = thresholds
        self.training = dict(training or {})
        self._transform = preprocess.transform()

    # -- inference ------------------------------------------------------------------------------------
    def predict_tensor(self, images: torch.Tensor) -> AnomalyOutput:
        return self.model.predict(images)

    def predict_images(self, images: Sequence[Image.Image | str | Path], *, batch_size: int = 8) -> list[Prediction]:
        """One ``Prediction`` per image (PIL images or paths), map and boxes at the image's own size."""
        out: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            names, pils, tensors = self.prepare(images[start:start + batch_size], start)
            scores, maps = [], []
            for run in same_size_runs([t.shape for t in tensors], batch_size):  # "native": sizes differ
                res = self.predict_tensor(torch.stack([tensors[k] for k in run]))
                scores += res.scores.tolist()
                maps += list(res.maps)
            for name, pil, score, amap in zip(names, pils, scores, maps):
                full = map_to_original(amap, (pil.height, pil.width), self.preprocess.resize)
                is_defect = bool(score > self.thresholds.image)
                boxes = boxes_from_map(full, self.thresholds.pixel) if is_defect else []
                out.append(Prediction(name, float(score), self.thresholds.image, is_defect, full, boxes,
                                      {"pixel_threshold": self.thresholds.pixel, "method": self.method}))
        return out

    def prepare(self, chunk: Sequence[Image.Image | str | Path], start: int = 0
                ) -> tuple[list[str], list[Image.Image], list[torch.Tensor]]:
        """(names, decoded images, model inputs) of PIL images or paths; ``start`` numbers unnamed images."""
        pils, names = [], []
        for i, im in enumerate(chunk):
            if isinstance(im, Image.Image):
                pils.append(im.convert(self.preprocess.mode))
                names.append(getattr(im, "filename", "") or f"<image {start + i}>")
            else:
                pils.append(load_pil(im, self.preprocess.mode))
                names.append(str(im))
        tensors = [self._transform(p, None)[0] for p in pils]
        for name, t in zip(names, tensors, strict=True):
            if min(t.shape[-2:]) < self.min_input_side:
                raise BadInputError(name, f"{t.shape[-2]}x{t.shape[-1]} px after preprocessing, less than "
                                          f"the {self.min_input_side} px per side this engine needs "
                                          "(use --engine torch)")
        return names, pils, tensors

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
        model_path = run_dir / str(meta.get("model_file", MODEL_FILE))
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
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise BadInputError(run_dir, f"cannot restore the detector ({type(exc).__name__}: "
                                         f"{str(exc).splitlines()[0][:200]})") from None
        return cls(model, meta["method"], preprocess, thresholds, meta.get("training", {}))


__all__ = ["Detector", "Preprocess", "Thresholds", "boxes_from_map", "FORMAT", "MODEL_FILE", "META_FILE"]
