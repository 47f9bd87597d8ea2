"""The prefix layout (class = file-name prefix, as in NEU surface defects)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectlab.data import open_dataset
from defectlab.errors import BadInputError
from tests.conftest import shared_dataset


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)


def test_prefix_layout_is_detected_across_subfolders(tmp_path: Path) -> None:
    for name in ("IMAGES/crazing_1.jpg", "IMAGES/crazing_2.jpg", "IMAGES/rolled-in_scale_10.jpg",
                 "Validation_Images/pitted_surface_3.jpg"):
        _img(tmp_path / name)
    idx = open_dataset(tmp_path)
    assert idx.layout == "prefix"
    assert idx.counts() == {"all": {"crazing": 2, "pitted_surface": 1, "rolled-in_scale": 1}}
    assert all(r.mask_path is None for r in idx.records)


def test_unprefixed_files_are_an_unknown_layout(tmp_path: Path) -> None:
    _img(tmp_path / "a" / "photo.png")
    with pytest.raises(BadInputError, match="unknown layout"):
        open_dataset(tmp_path)


def test_neu_det_counts() -> None:
    idx = open_dataset(shared_dataset("neu_det"))
    assert idx.counts()["all"] == {c: 300 for c in ("crazing", "inclusion", "patches", "pitted_surface",
                                                     "rolled-in_scale", "scratches")}
