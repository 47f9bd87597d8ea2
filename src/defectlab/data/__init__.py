"""Data layer: index (layouts), io (decoding), transforms, dataset, synthetic, describe, split.

The names below load on first use, so ``defectlab.data.io`` (decoding, torch-free) can be imported
without torch (the inference runtime, ``defectlab.runtime``).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DefectDataset": "dataset", "Sample": "dataset", "load_pair": "dataset",
    "GOOD": "index", "DatasetIndex": "index", "SampleRecord": "index", "open_dataset": "index",
    "load_image": "io", "load_mask": "io", "load_pil": "io",
    "PairTransform": "transforms",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'defectlab.data' has no attribute '{name}'")
    return getattr(importlib.import_module(f"defectlab.data.{_WHERE[name]}"), name)
