"""YOLO (Ultralytics) datasets: ``images/<split>/``, ``labels/<split>/<stem>.txt``, ``data.yaml``.

Detection labels are ``class cx cy w h``, segmentation labels ``class x1 y1 x2 y2 ...`` (the instance's
polygon), all normalised by the image width/height, so every coordinate lies in [0, 1]. Good images
get an empty label file (background). ``data.yaml`` names the splits; when there is no ``val`` split
(MVTec without a manifest) ``val`` points at ``test`` so the file is usable, and the summary says so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from defectlab.config import atomic_write_text, write_yaml
from defectlab.data.io import IMAGE_SUFFIXES, read_info
from defectlab.errors import BadInputError, ConfigError
from defectlab.export.instances import Instance, box_instance
from defectlab.export.items import ExportItem, place_image, splits_of

log = logging.getLogger(__name__)
TASKS = ("detect", "segment")


def _fmt(v: float) -> str:
    return f"{min(max(v, 0.0), 1.0):.6f}"


def label_lines(item: ExportItem, class_id: dict[str, int], task: str) -> list[str]:
    w, h = float(item.width), float(item.height)
    lines = []
    for inst in item.instances:
        c = class_id[inst.category]
        if task == "detect":
            x, y, bw, bh = inst.bbox
            vals = [(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h]
        else:
            if not inst.polygons:
                raise ConfigError(f"{item.path}: instance has no polygon (boxes-only data); "
                                  "use --task detect")
            poly = max(inst.polygons, key=len)  # one polygon per 8-connected instance (holes bridged in)
            vals = [v / (w if i % 2 == 0 else h) for i, v in enumerate(poly)]
        lines.append(" ".join([str(c)] + [_fmt(v) for v in vals]))
    return lines


def export_yolo(items: list[ExportItem], categories: list[str], out: str | Path, *, images: str = "copy",
                task: str = "detect") -> dict[str, Any]:
    if task not in TASKS:
        raise ConfigError(f"unknown YOLO task '{task}'; known: {', '.join(TASKS)}")
    if images == "none":
        raise ConfigError("YOLO datasets need their images beside the labels: use --images copy or symlink")
    out = Path(out)
    class_id = {c: i for i, c in enumerate(categories)}
    summary: dict[str, Any] = {"format": f"yolo-{task}", "out": str(out), "splits": {}}
    for split in splits_of(items):
        part = [it for it in items if it.split == split]
        for it in part:
            place_image(it, out / "images" / split / it.name, images)
            lines = label_lines(it, class_id, task)
            atomic_write_text(out / "labels" / split / (Path(it.name).stem + ".txt"),
                              "\n".join(lines) + ("\n" if lines else ""))
        summary["splits"][split] = {"images": len(part), "instances": sum(len(it.instances) for it in part)}
    splits = list(summary["splits"])
    data: dict[str, Any] = {"path": str(out.resolve())}
    train = "train" if "train" in splits else splits[0]
    val = "val" if "val" in splits else ("test" if "test" in splits else train)
    data["train"] = f"images/{train}"
    data["val"] = f"images/{val}"
    if "test" in splits:
        data["test"] = "images/test"
    data["names"] = list(categories)  # index = class id
    write_yaml(out / "data.yaml", data)
    if val != "val":
        summary["note"] = (f"no 'val' split: data.yaml uses '{val}' for val "
                           "(give --manifest for a train/val split)")
    summary["files"] = [str(out / "data.yaml")]
    return summary


def read_yolo(data_yaml: str | Path, split: str) -> tuple[list[ExportItem], list[str]]:
    """Read back one split of a YOLO detection dataset as box-only items (for round trips and imports)."""
    data_yaml = Path(data_yaml)
    try:
        data = yaml.safe_load(data_yaml.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BadInputError(data_yaml, f"cannot read YOLO data.yaml ({exc})".splitlines()[0]) from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        categories = [names[k] for k in sorted(names)]
    elif isinstance(names, list):
        categories = list(names)
    else:
        raise BadInputError(data_yaml, "no 'names' in data.yaml")
    root = Path(data.get("path") or data_yaml.parent)
    img_dir = root / "images" / split
    lab_dir = root / "labels" / split
    items = []
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        info = read_info(img)
        inst: list[Instance] = []
        label = lab_dir / (img.stem + ".txt")
        text = label.read_text() if label.is_file() else ""
        for n, line in enumerate(text.splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                c, cx, cy, bw, bh = int(parts[0]), *map(float, parts[1:5])
            except (ValueError, TypeError):
                raise BadInputError(label, f"line {n}: expected 'class cx cy w h'") from None
            if len(parts) != 5 or not 0 <= c < len(categories):
                raise BadInputError(label, f"line {n}: expected 'class cx cy w h' with class "
                                           f"< {len(categories)}")
            W, H = info.width, info.height
            inst.append(box_instance(categories[c], ((cx - bw / 2) * W, (cy - bh / 2) * H,
                                                     (cx + bw / 2) * W, (cy + bh / 2) * H)))
        items.append(ExportItem(img, img.name, info.width, info.height, split, inst,
                                inst[0].category if inst else "good"))
    return items, categories
