"""Supervised defect segmentation: U-Net (small conv or MobileNetV2 encoder), BCE + Dice, binary or one
channel per defect type; one evaluation (:func:`evaluate_maps`) shared with thresholded anomaly maps."""

from defectlab.segment.evaluate import evaluate_maps
from defectlab.segment.model import SegConfig, Segmenter
from defectlab.segment.split import segmentation_split
from defectlab.segment.unet import ENCODERS, UNet, build_unet

__all__ = ["ENCODERS", "SegConfig", "Segmenter", "UNet", "build_unet", "evaluate_maps", "segmentation_split"]
