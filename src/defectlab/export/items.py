"""What every exporter writes: images with their size, split and instances, collected from a dataset.

``collect(data, options)`` reads a dataset folder (MVTec or folder layout) or a split manifest CSV
(``defectlab data split``), decodes each defect mask (its size must match its image's) and turns every
8-connected component into an :class:`~defectlab.export.instances.Instance`. Splits come from the
manifest (train/val/test) or from the dataset (MVTec's train/test; ``all`` for the folder layout).
Good images become image entries without instances (``include_good=False`` drops them).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from defectlab.data.index import GOOD, DatasetIndex, open_dataset
from defectlab.data.io import load_mask, read_info
from defectlab.errors import BadInputError, ConfigError
from defectlab.export.instances import Instance, mask_instances

log = logging.getLogger(__name__)

IMAGE_MODES = ("copy", "symlink", "none")


@dataclass(frozen=True)
class ExportOptions:
    min_area: int = 1  # components with fewer pixels are dropped (noise)
    tolerance: float = 0.0  # polygon simplification (Douglas-Peucker), pixels; 0 = exact pixel outline
    images: str = "copy"  # copy | symlink | none (reference the original files where the format allows)
    include_good: bool = True  # good images as entries without instances (negatives)
    manifest: str | None = None  # split manifest CSV: its train/val/test splits replace the dataset's
    mask_dir: str | None = None  # folder layout: masks in <mask_dir>/<defect>/<stem>[_mask].png

    def __post_init__(self) -> None:
        if self.images not in IMAGE_MODES:
            raise ConfigError(f"unknown image mode '{self.images}'; known: {', '.join(IMAGE_MODES)}")
        if self.min_area < 1:
            raise ConfigError(f"min_area must be >= 1 pixel, got {self.min_area}")
        if self.tolerance < 0:
            raise ConfigError(f"polygon tolerance must be >= 0, got {self.tolerance}")


@dataclass
class ExportItem:
    """One image to export. ``name`` is unique within the export (flattened relative path)."""

    path: Path
    name: str
    width: int
    height: int
    split: str
    instances: list[Instance] = field(default_factory=list)
    defect_type: str = GOOD


def open_source(data: str | Path, manifest: str | Path | None = None, *,
                mask_dir: str | Path | None = None) -> DatasetIndex:
    """A dataset folder, or a manifest CSV (given as DATA or as ``manifest``)."""
    data = Path(data)
    if manifest is not None or (data.is_file() and data.suffix.lower() == ".csv"):
        from defectlab.data.split import read_manifest

        return read_manifest(manifest if manifest is not None else data)
    return open_dataset(data, mask_dir=mask_dir)


def collect(data: str | Path | DatasetIndex, options: ExportOptions | None = None,
            *, polygons: bool = True) -> tuple[list[ExportItem], list[str]]:
    """(items, categories). Categories are the defect types, sorted (their order is the class ids)."""
    options = options or ExportOptions()
    index = data if isinstance(data, DatasetIndex) else open_source(data, options.manifest, mask_dir=options.mask_dir)
    categories = index.defect_types
    names: set[str] = set()
    items: list[ExportItem] = []
    records = [r for r in index.records if options.include_good or r.defect_type != GOOD]
    for rec in tqdm(records, desc="masks -> instances", leave=False, disable=len(records) < 50):
        info = read_info(rec.path)
        instances: list[Instance] = []
        if rec.defect_type != GOOD:
            if rec.mask_path is None:
                raise BadInputError(rec.path, "defect image has no mask; export needs masks (or import "
                                    "boxes with 'defectlab export import-voc')")
            mask = load_mask(rec.mask_path, size=(info.width, info.height))
            instances = mask_instances(mask, rec.defect_type, min_area=options.min_area,
                                       tolerance=options.tolerance, polygons=polygons)
            if not instances:
                log.warning("%s: mask has no component of >= %d pixels; exported without instances",
                            rec.mask_path, options.min_area)
        items.append(ExportItem(rec.path, _unique_name(rec.path, index.root, names), info.width, info.height,
                                rec.split, instances, rec.defect_type))
    return items, categories


def _unique_name(path: Path, root: Path, taken: set[str]) -> str:
    """MVTec reuses 000.png in every folder: name files by their path below the root (test_crack_000.png)."""
    try:
        rel = path.resolve().relative_to(Path(root).resolve())
        name = "_".join(rel.parts)
    except ValueError:
        name = "_".join(path.parts[-3:])
    stem, suffix = os.path.splitext(name)
    k = 1
    while name in taken:
        name = f"{stem}_{k}{suffix}"
        k += 1
    taken.add(name)
    return name


def place_image(item: ExportItem, dest: Path, mode: str) -> None:
    """Copy or symlink one image into the export (``none``: nothing)."""
    if mode == "none":
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() or dest.is_symlink():
        dest.unlink()
    if mode == "symlink":
        dest.symlink_to(item.path.resolve())
    else:
        shutil.copy2(item.path, dest)


def splits_of(items: list[ExportItem]) -> list[str]:
    order = {"train": 0, "val": 1, "test": 2}
    return sorted({it.split for it in items}, key=lambda s: (order.get(s, 3), s))
