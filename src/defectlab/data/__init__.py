"""Data layer: index (layouts), io (decoding), transforms, dataset, synthetic, describe, split."""

from defectlab.data.dataset import DefectDataset, Sample, load_pair
from defectlab.data.index import GOOD, DatasetIndex, SampleRecord, open_dataset
from defectlab.data.io import load_image, load_mask, load_pil
from defectlab.data.transforms import PairTransform

__all__ = [
    "GOOD", "DatasetIndex", "DefectDataset", "PairTransform", "Sample", "SampleRecord",
    "load_image", "load_mask", "load_pil", "load_pair", "open_dataset",
]
