"""COCO instances JSON: images, categories (ids from 1), one annotation per instance.

Layout: ``OUT/images/<split>/<name>`` (copied or symlinked; with ``images="none"`` ``file_name`` is the
original absolute path) and ``OUT/annotations/instances_<split>.json``. ``segmentation`` is a polygon
list (pixel-edge outlines, holes bridged in) in ``instances_<split>.json`` and exact compressed RLE in
``instances_<split>_rle.json`` (``segm="both"``, the default; ``"polygon"`` or ``"rle"`` write one file).
``bbox`` is ``[x, y, w, h]``, ``area`` the instance's pixel count (box area for box-only imports, which
carry no ``segmentation``), ``iscrowd`` 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defectlab.config import write_json
from defectlab.errors import ConfigError
from defectlab.export.instances import mask_to_rle
from defectlab.export.items import ExportItem, place_image, splits_of

SEGM_MODES = ("both", "polygon", "rle", "none")


def coco_dict(items: list[ExportItem], categories: list[str], *, segm: str = "polygon",
              file_names: list[str] | None = None) -> dict[str, Any]:
    """The COCO dict of ``items`` (image ids 1..N in order, category ids 1..C in ``categories`` order)."""
    if segm not in ("polygon", "rle", "none"):
        raise ConfigError(f"unknown COCO segmentation '{segm}'; known: polygon, rle, none")
    cat_id = {c: i + 1 for i, c in enumerate(categories)}
    images, anns = [], []
    for i, item in enumerate(items, start=1):
        fname = file_names[i - 1] if file_names is not None else item.name
        images.append({"id": i, "file_name": fname, "width": item.width, "height": item.height})
        for inst in item.instances:
            if inst.category not in cat_id:
                raise ConfigError(f"{item.path}: category '{inst.category}' not in {categories}")
            ann: dict[str, Any] = {
                "id": len(anns) + 1, "image_id": i, "category_id": cat_id[inst.category],
                "bbox": [float(v) for v in inst.bbox], "area": float(inst.area), "iscrowd": 0,
            }
            if inst.mask is not None and segm == "rle":
                ann["segmentation"] = mask_to_rle(inst.mask)
            elif inst.polygons and segm == "polygon":
                ann["segmentation"] = inst.polygons
            anns.append(ann)
    return {
        "info": {"description": "exported by defectlab", "version": "1.0"},
        "images": images,
        "annotations": anns,
        "categories": [{"id": cat_id[c], "name": c, "supercategory": "defect"} for c in categories],
    }


def export_coco(items: list[ExportItem], categories: list[str], out: str | Path, *, images: str = "copy",
                segm: str = "both") -> dict[str, Any]:
    if segm not in SEGM_MODES:
        raise ConfigError(f"unknown COCO segmentation '{segm}'; known: {', '.join(SEGM_MODES)}")
    out = Path(out)
    written: dict[str, Any] = {"format": "coco", "out": str(out), "files": [], "splits": {}}
    for split in splits_of(items):
        part = [it for it in items if it.split == split]
        names = []
        for it in part:
            if images == "none":
                names.append(str(it.path.resolve()))
            else:
                place_image(it, out / "images" / split / it.name, images)
                names.append(it.name)
        variants = {"both": [("polygon", ""), ("rle", "_rle")], "polygon": [("polygon", "")],
                    "rle": [("rle", "")], "none": [("none", "")]}[segm]
        for mode, suffix in variants:
            path = out / "annotations" / f"instances_{split}{suffix}.json"
            write_json(path, coco_dict(part, categories, segm=mode, file_names=names))
            written["files"].append(str(path))
        written["splits"][split] = {"images": len(part), "instances": sum(len(it.instances) for it in part)}
    return written
