"""Mapping anomaly maps from the model's input grid back onto the original image: the torch-free
implementation in ``defectlab.runtime.geometry``, shared by every engine, fit and test runs."""

from defectlab.runtime.geometry import letterbox_box, map_to_original, resize_map

__all__ = ["letterbox_box", "map_to_original", "resize_map"]
