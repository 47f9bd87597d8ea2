"""Export masks to detection/segmentation formats (COCO, YOLO, VOC, SAM) and import VOC boxes.

Every exporter has the signature ``export(items, categories, out, *, images=..., **format_options)
-> summary dict`` and is registered in ``EXPORTERS``; items come from
:func:`defectlab.export.items.collect` (dataset or manifest + masks) or from an import
(:func:`defectlab.export.voc.import_voc`).
"""

from __future__ import annotations

from defectlab.export.coco import export_coco
from defectlab.export.instances import Instance, mask_instances, mask_to_polygons, mask_to_rle, rle_to_mask
from defectlab.export.items import ExportItem, ExportOptions, collect
from defectlab.export.sam import export_sam
from defectlab.export.voc import export_voc, import_voc
from defectlab.export.yolo import export_yolo, read_yolo
from defectlab.registry import Registry

EXPORTERS: Registry = Registry("export format")
EXPORTERS.register("coco")(export_coco)
EXPORTERS.register("yolo")(export_yolo)
EXPORTERS.register("voc")(export_voc)
EXPORTERS.register("sam")(export_sam)

__all__ = [
    "EXPORTERS", "ExportItem", "ExportOptions", "Instance", "collect", "export_coco", "export_sam",
    "export_voc", "export_yolo", "import_voc", "mask_instances", "mask_to_polygons", "mask_to_rle",
    "read_yolo", "rle_to_mask",
]
