"""Supervised defect-type classification: models, training, experiment series, reports, prediction."""

from defectlab.classify import models, pretrained  # noqa: F401 - registers every classifier
from defectlab.classify.models import CLASSIFIERS, Classifier, ModelConfig, build_classifier

__all__ = ["CLASSIFIERS", "Classifier", "ModelConfig", "build_classifier"]
