"""Which images train the U-Net and which test it.

MVTec keeps every defect image in ``test``; supervised segmentation needs some for training. Without a
manifest, the defect images that have masks are split per defect type with a seeded permutation
(``test_fraction`` to test, at least one to each side when a type has two or more images); good images
from ``train`` (at most ``max_good_train``, seeded choice) train with empty masks and good images from
``test`` test. A split manifest (``defectlab data split``) is used as it is: ``train`` trains, ``test``
tests (``val`` tests when there is no ``test``).
"""

from __future__ import annotations

import logging

import numpy as np

from defectlab.data.index import GOOD, DatasetIndex, SampleRecord
from defectlab.errors import BadInputError, ConfigError

log = logging.getLogger(__name__)


def segmentation_split(index: DatasetIndex, *, test_fraction: float = 0.5, seed: int = 0,
                       max_good_train: int | None = None) -> dict[str, list[SampleRecord]]:
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    no_mask = [r for r in index.records if r.defect_type != GOOD and r.mask_path is None]
    if no_mask:
        log.warning("%d defect image(s) have no mask and are left out (e.g. %s)", len(no_mask),
                    no_mask[0].path)
    records = [r for r in index.records if r.defect_type == GOOD or r.mask_path is not None]
    rng = np.random.default_rng(seed)
    if index.layout == "manifest":
        train = [r for r in records if r.split == "train"]
        test = [r for r in records if r.split == "test"] or [r for r in records if r.split == "val"]
    else:
        train, test = [], []
        for dt in sorted({r.defect_type for r in records} - {GOOD}):
            group = [r for r in records if r.defect_type == dt]
            order = rng.permutation(len(group))
            n_test = int(round(len(group) * test_fraction))
            if len(group) >= 2:
                n_test = min(max(n_test, 1), len(group) - 1)
            test += [group[i] for i in order[:n_test]]
            train += [group[i] for i in order[n_test:]]
        good = [r for r in records if r.defect_type == GOOD]
        good_train = [r for r in good if r.split == "train"]
        good_test = [r for r in good if r.split == "test"]
        good_all = [r for r in good if r.split not in ("train", "test")]
        if good_all:  # folder layout: split the good images too
            order = rng.permutation(len(good_all))
            n_test = int(round(len(good_all) * test_fraction))
            good_test += [good_all[i] for i in order[:n_test]]
            good_train += [good_all[i] for i in order[n_test:]]
        train += good_train
        test += good_test
    good_train = [r for r in train if r.defect_type == GOOD]
    if max_good_train is not None and len(good_train) > max_good_train:
        keep = {int(i) for i in rng.choice(len(good_train), max_good_train, replace=False)}
        dropped = {id(good_train[i]) for i in range(len(good_train)) if i not in keep}
        train = [r for r in train if id(r) not in dropped]
    if not any(r.defect_type != GOOD for r in train):
        raise BadInputError(index.root, "no defect image with a mask to train the segmentation model on")
    return {"train": train, "test": test}
