"""The dataset index: which image files exist, their split, defect type and mask (no pixels read).

Two layouts are understood, and a root that holds several MVTec categories:

* **MVTec AD**: ``<category>/train/good``, ``<category>/test/<defect>``,
  ``<category>/ground_truth/<defect>/<stem>_mask.png``.
* **Folder**: ``<root>/good`` plus one folder per defect type; masks optional, either beside the
  images as ``<stem><suffix>.<ext>`` (default suffix ``_mask``) or in a parallel folder
  ``<mask_dir>/<defect>/<stem><suffix>.<ext>``. Every record has split ``"all"``; ``defectlab data
  split`` makes train/val/test manifests.
* **Prefix** (e.g. NEU surface defects): image files whose class is the file-name prefix before a trailing
  number (``crazing_12.jpg`` -> ``crazing``), in the root or in its sub-folders; no masks, split ``"all"``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from defectlab.data.io import IMAGE_SUFFIXES, is_image_file
from defectlab.errors import BadInputError

log = logging.getLogger(__name__)

GOOD = "good"


@dataclass(frozen=True)
class SampleRecord:
    """One image of the dataset. ``label`` is 0 for good and 1 for any defect."""

    path: Path
    split: str  # "train" | "test" | "all" (folder layout) | "val" (manifests)
    defect_type: str  # "good" or the defect folder's name
    mask_path: Path | None = None

    @property
    def label(self) -> int:
        return 0 if self.defect_type == GOOD else 1


@dataclass
class DatasetIndex:
    root: Path
    name: str
    layout: str  # "mvtec" | "folder" | "manifest"
    records: list[SampleRecord] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # lenient mode: (file, reason)

    @property
    def defect_types(self) -> list[str]:
        return sorted({r.defect_type for r in self.records} - {GOOD})

    @property
    def classes(self) -> list[str]:
        """Class names for defect-type classification: good first (if present), then defects."""
        has_good = any(r.defect_type == GOOD for r in self.records)
        return ([GOOD] if has_good else []) + self.defect_types

    @property
    def splits(self) -> list[str]:
        return sorted({r.split for r in self.records})

    def select(self, split: str | None = None, defect_types: list[str] | None = None) -> list[SampleRecord]:
        return [
            r for r in self.records
            if (split is None or r.split == split) and (defect_types is None or r.defect_type in defect_types)
        ]

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {defect_type: n}}."""
        out: dict[str, Counter[str]] = {}
        for r in self.records:
            out.setdefault(r.split, Counter())[r.defect_type] += 1
        return {s: dict(sorted(c.items())) for s, c in sorted(out.items())}


def _images(folder: Path, exclude_suffix: str | None = None) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if is_image_file(p))
    if exclude_suffix:
        files = [p for p in files if not p.stem.endswith(exclude_suffix)]
    return files


def _find_mask(folder: Path, stem: str, suffix: str) -> Path | None:
    for ext in (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff"):
        for name in (f"{stem}{suffix}{ext}", f"{stem}{suffix}{ext.upper()}"):
            cand = folder / name
            if cand.is_file():
                return cand
    return None


def is_mvtec_category(path: Path) -> bool:
    return (path / "train").is_dir() and (path / "test").is_dir()


def find_categories(root: Path) -> list[Path]:
    """MVTec categories directly below ``root`` (for an MVTec root like ``mvtec_anomaly_detection/``)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and is_mvtec_category(p))


def index_mvtec(root: str | Path, *, lenient: bool = False) -> DatasetIndex:
    root = Path(root)
    idx = DatasetIndex(root=root, name=root.name, layout="mvtec")
    gt_root = root / "ground_truth"
    for split in ("train", "test"):
        split_dir = root / split
        for cls_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for img in _images(cls_dir):
                mask = None
                if cls_dir.name != GOOD and gt_root.is_dir():
                    mask = _find_mask(gt_root / cls_dir.name, img.stem, "_mask") or _find_mask(
                        gt_root / cls_dir.name, img.stem, ""
                    )
                    if mask is None:
                        expected = gt_root / cls_dir.name / (img.stem + "_mask.png")
                        problem = f"defect image has no mask (expected {expected})"
                        if not lenient:
                            raise BadInputError(img, problem)
                        log.warning("%s: %s; skipped", img, problem)
                        idx.skipped.append((img, problem))
                        continue
                idx.records.append(SampleRecord(img, split, cls_dir.name, mask))
    _check_nonempty(idx)
    if not idx.select(split="train"):
        raise BadInputError(root / "train", "no training images (expected train/good/*.png)")
    return idx


def index_folder(
    root: str | Path, *, good: str = GOOD, mask_suffix: str = "_mask", mask_dir: str | Path | None = None,
) -> DatasetIndex:
    root = Path(root)
    idx = DatasetIndex(root=root, name=root.name, layout="folder")
    mask_root = Path(mask_dir) if mask_dir is not None else None
    for cls_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if mask_root is not None and cls_dir.resolve() == mask_root.resolve():
            continue
        defect = GOOD if cls_dir.name == good else cls_dir.name
        for img in _images(cls_dir, exclude_suffix=mask_suffix or None):
            mask = None
            if defect != GOOD:
                mask = _find_mask(cls_dir, img.stem, mask_suffix) if mask_suffix else None
                if mask is None and mask_root is not None:
                    mask = _find_mask(mask_root / cls_dir.name, img.stem, mask_suffix) or _find_mask(
                        mask_root / cls_dir.name, img.stem, ""
                    )
            idx.records.append(SampleRecord(img, "all", defect, mask))
    _check_nonempty(idx)
    return idx


_PREFIX = re.compile(r"^(?P<cls>.+?)[_-]?\d+$")


def _prefix_class(path: Path) -> str | None:
    m = _PREFIX.match(path.stem)
    return m.group("cls") if m else None


def _prefix_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if is_image_file(p))


def index_prefix(root: str | Path) -> DatasetIndex:
    """Images anywhere below ``root`` whose class is their file-name prefix (see module docstring)."""
    root = Path(root)
    idx = DatasetIndex(root=root, name=root.name, layout="prefix")
    for img in _prefix_images(root):
        cls = _prefix_class(img)
        if cls is None:
            raise BadInputError(img, "file name has no '<class>_<number>' form (prefix layout)")
        idx.records.append(SampleRecord(img, "all", cls))
    _check_nonempty(idx)
    return idx


def _looks_prefixed(root: Path) -> bool:
    images = _prefix_images(root)
    classes = {_prefix_class(p) for p in images}
    return bool(images) and None not in classes and len(classes) >= 2


def _check_nonempty(idx: DatasetIndex) -> None:
    if not idx.records:
        raise BadInputError(idx.root, f"no images found (looked for {', '.join(IMAGE_SUFFIXES)})")


def open_dataset(path: str | Path, *, lenient: bool = False, mask_dir: str | Path | None = None) -> DatasetIndex:
    """Index a dataset of either layout; the layout is detected from the folder structure."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(path, "dataset folder not found")
    if not path.is_dir():
        raise BadInputError(path, "expected a dataset folder, got a file")
    if is_mvtec_category(path):
        return index_mvtec(path, lenient=lenient)
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not subdirs and not any(is_image_file(p) for p in path.iterdir()):
        raise BadInputError(path, "empty folder: expected train/ and test/ (MVTec) or good/ + defect folders")
    if find_categories(path):
        names = ", ".join(p.name for p in find_categories(path))
        raise BadInputError(path, f"holds several MVTec categories ({names}); name one of them")
    if (path / GOOD).is_dir():
        return index_folder(path, mask_dir=mask_dir)
    if _looks_prefixed(path):
        return index_prefix(path)
    raise BadInputError(
        path, "unknown layout: expected an MVTec category (train/good, test/<defect>, ground_truth/), "
        "a folder layout (good/ plus one folder per defect type) or class-prefixed file names (crazing_1.jpg)"
    )
