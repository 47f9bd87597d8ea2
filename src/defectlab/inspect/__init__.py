"""Inspection in production: batch inspection of a folder to CSV (+ heatmaps), engines, overlays."""

from defectlab.inspect.batch import COLUMNS, InspectSummary, inspect_folder
from defectlab.inspect.engine import ENGINES, load_engine
from defectlab.inspect.render import overlay, overlay_png

__all__ = ["COLUMNS", "ENGINES", "InspectSummary", "inspect_folder", "load_engine", "overlay", "overlay_png"]
