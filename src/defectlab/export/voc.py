"""Pascal VOC XML boxes, both ways.

Coordinates follow the VOC devkit: 1-based and inclusive, so a box of pixels ``x0 .. x1-1`` (0-based)
is ``xmin = x0 + 1``, ``xmax = x1``. Export writes ``Annotations/<stem>.xml``, ``JPEGImages/<name>``
(copied or symlinked) and ``ImageSets/Main/<split>.txt``. Import reads a folder of XML files (class
from ``<name>``) and finds each image in an images folder by ``<filename>`` (with or without its
extension, as NEU-DET has both); the image's real size wins and must match ``<size>`` when given.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from defectlab.config import atomic_write_text
from defectlab.data.io import IMAGE_SUFFIXES, read_info
from defectlab.errors import BadInputError, ConfigError
from defectlab.export.instances import Instance, box_instance
from defectlab.export.items import ExportItem, place_image, splits_of

log = logging.getLogger(__name__)


def voc_xml(item: ExportItem, filename: str, folder: str = "JPEGImages") -> str:
    objs = []
    for inst in item.instances:
        x0, y0, x1, y1 = inst.xyxy
        objs.append(
            "  <object>\n"
            f"    <name>{escape(inst.category)}</name>\n    <pose>Unspecified</pose>\n"
            "    <truncated>0</truncated>\n    <difficult>0</difficult>\n"
            f"    <bndbox>\n      <xmin>{x0 + 1}</xmin>\n      <ymin>{y0 + 1}</ymin>\n"
            f"      <xmax>{x1}</xmax>\n      <ymax>{y1}</ymax>\n    </bndbox>\n  </object>\n"
        )
    return (
        "<annotation>\n"
        f"  <folder>{escape(folder)}</folder>\n  <filename>{escape(filename)}</filename>\n"
        f"  <size>\n    <width>{item.width}</width>\n    <height>{item.height}</height>\n"
        "    <depth>3</depth>\n  </size>\n  <segmented>0</segmented>\n"
        + "".join(objs) + "</annotation>\n"
    )


def export_voc(items: list[ExportItem], categories: list[str], out: str | Path, *,
               images: str = "copy") -> dict[str, Any]:
    out = Path(out)
    summary: dict[str, Any] = {"format": "voc", "out": str(out), "splits": {}, "categories": categories}
    for split in splits_of(items):
        part = [it for it in items if it.split == split]
        for it in part:
            if images == "none":
                fname = str(it.path.resolve())
            else:
                place_image(it, out / "JPEGImages" / it.name, images)
                fname = it.name
            atomic_write_text(out / "Annotations" / (Path(it.name).stem + ".xml"), voc_xml(it, fname))
        atomic_write_text(out / "ImageSets" / "Main" / f"{split}.txt",
                          "".join(Path(it.name).stem + "\n" for it in part))
        summary["splits"][split] = {"images": len(part), "instances": sum(len(it.instances) for it in part)}
    atomic_write_text(out / "labels.txt", "".join(c + "\n" for c in categories))
    return summary


def _text(node: ET.Element, tag: str, xml: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise BadInputError(xml, f"malformed VOC XML: missing <{tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, xml: Path) -> float:
    value = _text(node, tag, xml)
    try:
        return float(value)
    except ValueError:
        raise BadInputError(xml, f"malformed VOC XML: <{tag}> is '{value}', not a number") from None


def _find_image(images: Path, filename: str, xml: Path) -> Path:
    cands = [images / filename]
    for stem in (Path(filename).stem, filename, xml.stem):
        cands += [images / (stem + s) for s in IMAGE_SUFFIXES]
    for c in cands:
        if c.is_file():
            return c
    raise BadInputError(xml, f"image '{filename}' not found in {images}")


def parse_voc(xml: Path, images: Path) -> tuple[Path, int, int, list[Instance]]:
    """(image path, width, height, box instances) of one VOC XML file."""
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as exc:
        raise BadInputError(xml, f"malformed XML ({exc})") from None
    if root.tag != "annotation":
        raise BadInputError(xml, f"not a VOC annotation (root element <{root.tag}>)")
    filename = root.findtext("filename", default="").strip() or xml.stem
    img = _find_image(images, filename, xml)
    info = read_info(img)
    size = root.find("size")
    if size is not None and size.find("width") is not None and size.find("height") is not None:
        w, h = int(_number(size, "width", xml)), int(_number(size, "height", xml))
        if (w, h) != (info.width, info.height) and w > 0 and h > 0:
            raise BadInputError(xml, f"<size> says {w}x{h} but {img.name} is {info.width}x{info.height}")
    out = []
    for obj in root.findall("object"):
        name = _text(obj, "name", xml)
        box = obj.find("bndbox")
        if box is None:
            raise BadInputError(xml, f"malformed VOC XML: object '{name}' has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(box, t, xml) for t in ("xmin", "ymin", "xmax", "ymax"))
        x0, y0 = max(round(xmin) - 1, 0), max(round(ymin) - 1, 0)
        x1, y1 = min(round(xmax), info.width), min(round(ymax), info.height)
        if x1 <= x0 or y1 <= y0:
            raise BadInputError(xml, f"object '{name}' has an empty box ({xmin}, {ymin}, {xmax}, {ymax})")
        out.append(box_instance(name, (x0, y0, x1, y1)))
    return img, info.width, info.height, out


def import_voc(annotations: str | Path, images: str | Path, *, val_fraction: float = 0.0,
               seed: int = 0) -> tuple[list[ExportItem], list[str]]:
    """VOC XML folder -> box-only items (split ``train``, or a seeded per-class ``train``/``val`` split
    by the image's first object class) and the sorted category names."""
    annotations, images = Path(annotations), Path(images)
    for folder in (annotations, images):
        if not folder.is_dir():
            raise BadInputError(folder, "folder not found")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    xmls = sorted(annotations.glob("*.xml"))
    if not xmls:
        raise BadInputError(annotations, "no .xml files")
    items: list[ExportItem] = []
    for xml in xmls:
        img, w, h, inst = parse_voc(xml, images)
        items.append(ExportItem(img, img.name, w, h, "train", inst, inst[0].category if inst else "good"))
    categories = sorted({i.category for it in items for i in it.instances})
    if val_fraction > 0:
        rng = np.random.default_rng(seed)
        for cat in sorted({it.defect_type for it in items}):
            idx = [k for k, it in enumerate(items) if it.defect_type == cat]
            n_val = int(round(len(idx) * val_fraction))
            for k in rng.permutation(idx)[:n_val]:
                items[int(k)].split = "val"
    return items, categories
