"""Heatmap overlays for one inspected image: the anomaly map in colour over the image, defect boxes drawn.

The colour scale is fixed relative to the deployable pixel threshold (the image threshold when the
detector has none): 0 -> faint blue, the threshold -> green, twice the threshold -> red, so
overlays of different images compare by eye.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from defectlab.runtime.colormap import heat_overlay
from defectlab.runtime.prediction import Prediction
from defectlab.runtime.regions import scale_boxes


def overlay(image: Image.Image, pred: Prediction, *, alpha: float = 0.5) -> Image.Image:
    """RGB image: ``image`` blended with the coloured anomaly map, boxes in red (verdict defect) or
    orange (below the image threshold). The map is resized to the image if the sizes differ."""
    base = image.convert("RGB")
    amap = np.asarray(pred.anomaly_map, dtype=np.float32)
    if amap.shape != (base.height, base.width):
        amap = np.asarray(Image.fromarray(amap, mode="F").resize(base.size, Image.BILINEAR))
    thr = float(pred.extra.get("pixel_threshold", pred.threshold))  # the map's own threshold when known
    scale = 2.0 * thr if thr > 0 else float(amap.max() or 1.0)
    out = Image.fromarray(heat_overlay(np.asarray(base), amap, 0.0, scale, alpha, fade=True), "RGB")
    draw = ImageDraw.Draw(out)
    width = max(1, round(min(out.size) / 100))
    boxes = pred.boxes
    src = pred.extra.get("source_size")
    if src and tuple(src) != out.size:  # boxes are in the file's pixels; this image was reduced on load
        boxes = scale_boxes(boxes, out.width / src[0], out.height / src[1], out.size)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)],
                       outline=(255, 0, 0) if pred.is_defect else (255, 165, 0), width=width)
    return out


def overlay_png(image: Image.Image, pred: Prediction) -> bytes:
    buf = io.BytesIO()
    overlay(image, pred).save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()
