"""A detector's preprocessing: what it is (``Preprocess``, stored in ``detector.json``) and, for the ONNX
engine, the model input as a float32 (3, H, W) numpy array (``to_array``; numpy and Pillow only).

``to_array`` is the inference half of the torch transforms the model was fitted with
(``defectlab.data.transforms.PairTransform``, ``anomaly.detector.NativeTransform``), which stay the torch
engine's: ``native`` resizes with the same Pillow call (agreement to float rounding of the intensity
statistics); ``squash`` / ``letterbox`` / ``crop`` resize with Pillow's antialiased bilinear filter, which
torchvision's antialiased resize follows to within one grey level (its fixed-point rounding differs;
tests compare both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from defectlab.errors import ConfigError
from defectlab.runtime.geometry import letterbox_box

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("squash", "letterbox", "crop")
STD_MEAN, STD_SCALE = 0.45, 0.2  # ``standardize``: target intensity mean and spread (ImageNet-like range)


def as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


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

    def transform(self) -> Any:
        """The torch transform (training and the torch engine): ``PairTransform`` or ``NativeTransform``."""
        from defectlab.anomaly.detector import NativeTransform
        from defectlab.data.transforms import PairTransform

        if self.resize == "native":
            return NativeTransform(self.scale, mean=self.mean, std=self.std, standardize=self.standardize)
        return PairTransform(self.image_size, resize=self.resize, mean=self.mean, std=self.std,
                             standardize=self.standardize)


def standardize(x: np.ndarray) -> np.ndarray:
    """(C, H, W) float32 in [0, 1] -> mean ``STD_MEAN``, standard deviation ``STD_SCALE`` over all its pixels,
    clipped to [0, 1] (as ``defectlab.data.transforms.standardize_intensity``)."""
    mean, std = np.float32(x.mean(dtype=np.float64)), np.float32(x.std(dtype=np.float64, ddof=1))
    out = (x - mean) / (std + np.float32(1e-6)) * np.float32(STD_SCALE) + np.float32(STD_MEAN)
    return np.clip(out, 0.0, 1.0, out=out)


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) uint8 or float32 -> (h, w, C) at ``size`` = (w, h), antialiased bilinear."""
    if x.shape[1::-1] == size:
        return x
    if x.dtype == np.uint8:
        img = Image.fromarray(x[..., 0] if x.shape[2] == 1 else x)
        return np.asarray(img.resize(size, Image.BILINEAR)).reshape(size[1], size[0], -1)
    planes = [Image.fromarray(np.ascontiguousarray(x[..., c]), "F") for c in range(x.shape[2])]
    return np.stack([np.asarray(p.resize(size, Image.BILINEAR)) for p in planes], axis=2)


def _pad(x: np.ndarray, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    return np.pad(x, ((top, bottom), (left, right), (0, 0)))


def _geometry(x: np.ndarray, size_hw: tuple[int, int], mode: str) -> np.ndarray:
    h, w = size_hw
    h0, w0 = x.shape[:2]
    if mode == "squash":
        return _resize(x, (w, h))
    if mode == "letterbox":
        top, left, nh, nw = letterbox_box((h0, w0), (h, w))
        return _pad(_resize(x, (nw, nh)), top, left, h - nh - top, w - nw - left)
    if mode == "crop":
        short = min(h, w)
        rw, rh = (short, int(short * h0 / w0)) if w0 <= h0 else (int(short * w0 / h0), short)
        x = _resize(x, (rw, rh))
        if w > rw or h > rh:
            pw, ph = max(w - rw, 0), max(h - rh, 0)
            x = _pad(x, ph // 2, pw // 2, (ph + 1) // 2, (pw + 1) // 2)
            rh, rw = x.shape[:2]
        top, left = int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0))
        return x[top:top + h, left:left + w]
    raise ConfigError(f"unknown resize mode '{mode}'; known: {', '.join(RESIZE_MODES)}")


def to_array(image: Image.Image, pre: Preprocess, size: tuple[int, int] | None = None) -> np.ndarray:
    """The model input (C, H, W) float32 of a decoded image. ``native``: ``size`` is the (w, h) to resize to
    (the detector's ``input_size``)."""
    if pre.resize == "native":
        w, h = image.size
        size = size or (max(16, round(w * pre.scale)), max(16, round(h * pre.scale)))
        if size != (w, h):
            image = image.resize(size, Image.BILINEAR)
        x = (np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).transpose(2, 0, 1)
        if pre.standardize:
            x = standardize(x)
    else:
        arr = np.asarray(image)
        arr = arr[..., None] if arr.ndim == 2 else arr
        if pre.standardize:
            arr = standardize((arr.astype(np.float32) / 255.0).transpose(2, 0, 1)).transpose(1, 2, 0)
        x = _geometry(arr, pre.image_size, pre.resize)
        x = (x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x).transpose(2, 0, 1)
    mean = np.asarray(pre.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(pre.std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocess", "RESIZE_MODES", "STD_MEAN", "STD_SCALE", "as_hw",
           "standardize", "to_array"]
