"""A torch Dataset over index records: (image, mask, label, defect type, path) samples."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from defectlab.data.index import SampleRecord
from defectlab.data.io import load_mask, load_pil
from defectlab.data.transforms import PairTransform

log = logging.getLogger(__name__)


class Sample(NamedTuple):
    """One loaded sample. ``mask`` is 1xHxW in {0, 1}; good images get an all-zero mask."""

    image: torch.Tensor
    mask: torch.Tensor
    label: int  # 0 good, 1 defect (anomaly detection); class index when ``class_to_idx`` is given
    defect_type: str
    path: str


def load_pair(record: SampleRecord, mode: str = "RGB") -> tuple[Image.Image, np.ndarray]:
    """Decode one record's image and its mask (all zeros when it has none), sizes checked."""
    image = load_pil(record.path, mode)
    if record.mask_path is not None:
        mask = load_mask(record.mask_path, size=image.size)
    else:
        mask = np.zeros((image.height, image.width), dtype=bool)
    return image, mask


class DefectDataset(Dataset[Sample]):
    def __init__(
        self,
        records: Sequence[SampleRecord],
        transform: PairTransform | Callable[[Image.Image, np.ndarray], tuple[torch.Tensor, torch.Tensor]],
        *,
        class_to_idx: dict[str, int] | None = None,
        mode: str = "RGB",
    ) -> None:
        self.records = list(records)
        self.transform = transform
        self.class_to_idx = class_to_idx
        self.mode = mode

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Sample:
        rec = self.records[i]
        image, mask = load_pair(rec, self.mode)
        img, msk = self.transform(image, mask)
        label = self.class_to_idx[rec.defect_type] if self.class_to_idx is not None else rec.label
        return Sample(img, msk, label, rec.defect_type, str(rec.path))
