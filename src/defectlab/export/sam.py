"""SAM-style prompts: one binary mask PNG per instance plus its box and point prompts.

``OUT/sam.json`` lists images (``file``, ``width``, ``height``, ``split``) with their instances:
``category``, ``box_xyxy`` (pixels, x1/y1 exclusive: the continuous extent SAM expects), ``point``
``[x, y]`` (the instance pixel farthest from its border: inside even for rings and crescents, where
the box centre is not), ``point_label`` 1 (foreground), ``area`` and ``mask`` (``masks/<stem>_<k>.png``,
255 on the instance, image-sized). Box-only imports get box prompts and ``mask: null`` (SAM can
then make the masks). Images go to ``OUT/images/`` (or are referenced by absolute path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from defectlab.config import atomic_path, write_json
from defectlab.export.items import ExportItem, place_image


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask pixel farthest from the background (ties: first in raster order)."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(c), int(r)


def export_sam(items: list[ExportItem], categories: list[str], out: str | Path, *,
               images: str = "copy") -> dict[str, Any]:
    out = Path(out)
    entries = []
    n_inst = 0
    for it in items:
        if images == "none":
            fname = str(it.path.resolve())
        else:
            place_image(it, out / "images" / it.name, images)
            fname = f"images/{it.name}"
        insts = []
        for k, inst in enumerate(it.instances):
            x0, y0, x1, y1 = inst.xyxy
            entry: dict[str, Any] = {"category": inst.category, "box_xyxy": [x0, y0, x1, y1],
                                     "area": inst.area}
            if inst.mask is not None:
                rel = f"masks/{Path(it.name).stem}_{k}.png"
                with atomic_path(out / rel) as tmp:
                    Image.fromarray(inst.mask.astype(np.uint8) * 255).save(tmp)
                entry["mask"] = rel
                entry["point"] = list(interior_point(inst.mask))
            else:
                entry["mask"] = None
                entry["point"] = [(x0 + x1 - 1) // 2, (y0 + y1 - 1) // 2]
            entry["point_label"] = 1
            insts.append(entry)
        n_inst += len(insts)
        entries.append({"file": fname, "width": it.width, "height": it.height, "split": it.split,
                        "instances": insts})
    write_json(out / "sam.json", {"categories": categories, "images": entries})
    return {"format": "sam", "out": str(out), "images": len(entries), "instances": n_inst,
            "files": [str(out / "sam.json")]}
