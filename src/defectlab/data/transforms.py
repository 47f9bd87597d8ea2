"""Paired image/mask transforms: the same geometry for both, normalisation for the image only.

Built on torchvision.transforms.v2, which applies one random draw to an ``Image`` and its ``Mask``.
Resize modes:

* ``squash``: resize to exactly (H, W), aspect ratio not kept (MVTec's usual 256x256 squash).
* ``letterbox``: keep aspect ratio, fit the longer side, pad with zeros to (H, W).
* ``crop``: keep aspect ratio, resize the shorter side, centre-crop to (H, W).

``standardize=True`` first shifts and scales each image's intensities (all channels together, before any
resizing or padding) to mean ``STD_MEAN`` and standard deviation ``STD_SCALE`` (clipped to [0, 1]): exposure
and gain differences between shots go away, texture and colour contrasts stay (see ``standardize_intensity``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from defectlab.errors import ConfigError
from defectlab.runtime.preprocess import (  # noqa: F401  (re-exported: torch-free constants)
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESIZE_MODES,
    STD_MEAN,
    STD_SCALE,
    as_hw,
)

AUGMENTS = ("none", "basic", "strong")


def standardize_intensity(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) uint8 or [0, 1] float image -> float32 in [0, 1] with mean ``STD_MEAN`` and standard deviation
    ``STD_SCALE`` over all its pixels and channels (a flat image becomes uniform ``STD_MEAN``)."""
    x = image.float() / 255.0 if not image.is_floating_point() else image.float()
    return ((x - x.mean()) / (x.std() + 1e-6) * STD_SCALE + STD_MEAN).clamp_(0.0, 1.0)


def resize_ops(size: int | Sequence[int], mode: str = "squash") -> list[v2.Transform]:
    h, w = as_hw(size)
    if mode == "squash":
        return [v2.Resize((h, w), antialias=True)]
    if mode == "letterbox":
        return [_Letterbox((h, w))]
    if mode == "crop":
        return [v2.Resize(min(h, w), antialias=True), v2.CenterCrop((h, w))]
    raise ConfigError(f"unknown resize mode '{mode}'; known: {', '.join(RESIZE_MODES)}")


class _Letterbox(v2.Transform):
    """Fit inside (H, W) keeping the aspect ratio, then pad symmetrically with zeros."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, *inputs):  # type: ignore[override]
        flat = inputs if len(inputs) > 1 else inputs[0]
        h0, w0 = v2.functional.get_size(_first_image(flat))
        h, w = self.size
        scale = min(h / h0, w / w0)
        nh, nw = max(1, round(h0 * scale)), max(1, round(w0 * scale))
        top, left = (h - nh) // 2, (w - nw) // 2
        ops = v2.Compose([v2.Resize((nh, nw), antialias=True),
                          v2.Pad([left, top, w - nw - left, h - nh - top], fill=0)])
        return ops(*inputs)


def _first_image(flat):
    if isinstance(flat, (tuple, list)):
        return flat[0]
    return flat


def augment_ops(preset: str, size: int | Sequence[int] | None = None) -> list[v2.Transform]:
    """The preset's geometric/colour ops on uint8 images; with ``size``, the random resized crop too."""
    if preset == "none":
        return []
    if preset not in AUGMENTS:
        raise ConfigError(f"unknown augmentation preset '{preset}'; known: {', '.join(AUGMENTS)}")
    ops: list[v2.Transform] = [
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomApply([v2.RandomRotation(15)], p=0.5),
    ]
    if preset == "strong":
        ops.append(v2.ColorJitter(0.3, 0.3, 0.2, 0.02))
    if size is not None:
        ops.append(v2.RandomApply([v2.RandomResizedCrop(as_hw(size), scale=(0.75, 1.0), antialias=True)], p=0.5))
    return ops


def erase_op(preset: str) -> v2.Transform | None:
    """Random erasing on the normalised image (``strong`` only)."""
    return v2.RandomErasing(p=0.25, value=0) if preset == "strong" else None


class PairTransform:
    """Callable ``(PIL image, HxW bool mask | None) -> (3xHxW float image, 1xHxW float mask)``."""

    def __init__(
        self,
        size: int | Sequence[int],
        *,
        resize: str = "squash",
        augment: str = "none",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        standardize: bool = False,
    ) -> None:
        self.size = as_hw(size)
        self.resize, self.augment, self.mean, self.std = resize, augment, tuple(mean), tuple(std)
        self.standardize = standardize
        ops = resize_ops(self.size, resize) + augment_ops(augment, self.size)
        tail: list[v2.Transform] = [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                                    v2.Normalize(self.mean, self.std)]
        erase = erase_op(augment)
        if erase is not None:
            tail.append(erase)
        self._geometry = v2.Compose(ops)
        self._tail = v2.Compose(tail)

    def __call__(self, image: Image.Image, mask: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        img = tv_tensors.Image(v2.functional.pil_to_tensor(image))
        if self.standardize:
            img = tv_tensors.Image(standardize_intensity(img))
        if mask is None:
            mask = np.zeros((image.height, image.width), dtype=bool)
        msk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)).to(torch.uint8)[None])
        img, msk = self._geometry(img, msk)
        img = self._tail(img)
        return img.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor).float()


def denormalize(image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """3xHxW normalised tensor -> HxWx3 uint8 array (for overlays)."""
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    x = (image.detach().cpu().float() * s + m).clamp(0, 1)
    return (x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
