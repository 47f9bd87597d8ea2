"""Run reports: heatmap overlays (``overlays``) and the Markdown run report (``markdown``)."""

from defectlab.report.markdown import anomaly_report, metrics_table
from defectlab.report.overlays import heat_overlay, mask_overlay, save_overlay

__all__ = ["anomaly_report", "heat_overlay", "mask_overlay", "metrics_table", "save_overlay"]
