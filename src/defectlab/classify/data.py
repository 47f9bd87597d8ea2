"""Images decoded and resized once, kept in memory as uint8 tensors; batches augmented on the fly.

Decoding a JPEG and resizing it costs far more than a small network's forward pass on a 64-128 px
image, so an experiment decodes every image once per input (``ExperimentCache``, ``cache_images``) and
each epoch only indexes the cached (N, 3, H, W) uint8 tensor. Augmentation uses the presets of
``defectlab.data.transforms`` (the same ops as ``PairTransform``: none | basic: flips, rotation, random
resized crop | strong: + colour jitter, random erasing), applied per sample to the cached uint8 image;
normalisation is done per batch.
A region-pooled attempt (``input="pooled"``, ``defectlab.classify.pooled``) caches a fourth channel, the
region's mask, which moves with the image and is passed on as weights in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torchvision.transforms import v2
from tqdm import tqdm

from defectlab.data.index import SampleRecord
from defectlab.data.io import load_mask, load_pil
from defectlab.data.transforms import augment_ops, erase_op, resize_ops

if TYPE_CHECKING:
    from defectlab.classify.train import TrainConfig


@dataclass
class ImageSet:
    """Cached images of one split: ``images`` (N, 3, H, W) uint8, ``labels`` (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def decode_resized(path: str | Image.Image, size: int, resize: str = "squash") -> torch.Tensor:
    """One image (a path or a decoded PIL image) as a (3, size, size) uint8 tensor (grayscale images are
    replicated to 3 channels)."""
    pil = path.convert("RGB") if isinstance(path, Image.Image) else load_pil(path, "RGB")
    img = v2.functional.pil_to_tensor(pil)
    return v2.Compose(resize_ops(size, resize))(img)


def cache_images(records: Sequence[SampleRecord], class_to_idx: dict[str, int], *, size: int,
                 resize: str = "squash", desc: str = "decode", input: str = "whole", margin: float = 0.25,
                 min_side: int = 48) -> ImageSet:
    """Decode ``records`` once: whole images resized (``input="whole"``), crops around each record's
    mask region (``input="region"``, see ``defectlab.classify.regions``), or whole images with their mask
    as a fourth channel (``input="pooled"``, see ``defectlab.classify.pooled``)."""
    from defectlab.classify.pooled import pooled_input
    from defectlab.classify.regions import decode_region

    images = torch.empty((len(records), 4 if input == "pooled" else 3, size, size), dtype=torch.uint8)
    for i, rec in enumerate(tqdm(records, desc=desc, leave=False, disable=len(records) < 200)):
        if input == "pooled":
            img = v2.functional.pil_to_tensor(load_pil(rec.path, "RGB"))
            size_wh = (int(img.shape[-1]), int(img.shape[-2]))
            mask = load_mask(rec.mask_path, size_wh) if rec.mask_path is not None else None
            images[i] = pooled_input(img, mask, size, resize)
        elif input == "region":
            images[i] = decode_region(rec.path, rec.mask_path, size, margin=margin, min_side=min_side)[0]
        else:
            images[i] = decode_resized(str(rec.path), size, resize)
    labels = torch.tensor([class_to_idx[r.defect_type] for r in records], dtype=torch.long)
    return ImageSet(images, labels, [str(r.path) for r in records])


class BatchAugment:
    """``(B, 3, H, W) uint8 -> (B, 3, H, W) float normalised``, random per sample for ``basic``/``strong``.

    Randomness comes from torch's global generator, which the trainer seeds per epoch. Channels after the
    third (a region mask) are only scaled to [0, 1].
    """

    def __init__(self, preset: str, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        ops = augment_ops(preset, size)  # validates the preset name
        self.geometry = v2.Compose(ops) if ops else None
        self.erase = erase_op(preset)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor, *, train: bool = True) -> torch.Tensor:
        if train and self.geometry is not None:
            images = torch.stack([self.geometry(img) for img in images])
        rgb, extra = images[:, :3], images[:, 3:]
        x = (rgb.float() / 255.0 - self.mean.to(images.device)) / self.std.to(images.device)
        if train and self.erase is not None:
            x = torch.stack([self.erase(img) for img in x])
        return torch.cat([x, extra.float() / 255.0], 1) if extra.shape[1] else x


class ExperimentCache:
    """Every image of an experiment decoded once per input (image size, resize mode, whole, region crop or
    pooled), shared by its attempts and folds."""

    def __init__(self, records: list[SampleRecord], classes: list[str]) -> None:
        self.records = {str(r.path): r for r in records}
        self.paths = sorted(self.records)
        self.pos = {p: i for i, p in enumerate(self.paths)}
        self.c2i = {c: i for i, c in enumerate(classes)}
        self._sets: dict[tuple, ImageSet] = {}

    def subset(self, records: list[SampleRecord], t: TrainConfig, *, train: bool = False) -> ImageSet:
        """The cached images of ``records``; the training split of an attempt with ``regions_from`` also
        gets each image with its detector region (``defectlab.classify.pooled.with_detector_regions``)."""
        if not (train and t.regions_from):
            return self._subset(records, t)
        key = ("regions_from", t.image_size, t.resize, t.regions_from)
        if key not in self._sets:
            from defectlab.classify.pooled import with_detector_regions

            full = self._subset([self.records[p] for p in self.paths], t)
            self._sets[key] = with_detector_regions(full, t.regions_from, size=t.image_size, resize=t.resize)
        both = self._sets[key]
        idx = torch.tensor([self.pos[str(r.path)] for r in records], dtype=torch.long)
        idx = torch.cat([idx, idx + len(self.paths)])
        return ImageSet(both.images[idx], both.labels[idx], [both.paths[i] for i in idx.tolist()])

    def _subset(self, records: list[SampleRecord], t: TrainConfig) -> ImageSet:
        region = t.input == "region"
        key = (t.image_size, t.resize, t.input) + ((t.region_margin, t.region_min_side) if region else ())
        if key not in self._sets:
            recs = [SampleRecord(Path(p), "all", next(iter(self.c2i)), self.records[p].mask_path) for p in self.paths]
            self._sets[key] = cache_images(recs, self.c2i, size=t.image_size, resize=t.resize,
                                           desc=f"decode {t.input} {t.image_size}px", input=t.input,
                                           margin=t.region_margin, min_side=t.region_min_side)
        full = self._sets[key]
        idx = torch.tensor([self.pos[str(r.path)] for r in records], dtype=torch.long)
        labels = torch.tensor([self.c2i[r.defect_type] for r in records], dtype=torch.long)
        return ImageSet(full.images[idx], labels, [str(r.path) for r in records])
