"""One verdict per part: the good-only detector as a gate, the defect type, the regions; sharpened by a
few labelled defects per type (``fewshot``). ``Bundle`` is what ``inspect`` and ``serve`` load."""

from defectlab.verdict.bundle import Bundle, build_bundle, is_bundle
from defectlab.verdict.fewshot import RefineConfig, Refiner
from defectlab.verdict.refine_run import load_refiner, refine_run
from defectlab.verdict.rule import Verdict, VerdictRule, decide

__all__ = [
    "Bundle",
    "RefineConfig",
    "Refiner",
    "Verdict",
    "VerdictRule",
    "build_bundle",
    "decide",
    "is_bundle",
    "load_refiner",
    "refine_run",
]
