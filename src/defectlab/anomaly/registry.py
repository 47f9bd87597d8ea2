"""The one registry of anomaly-detection methods (filled by the method modules, see ``__init__``)."""

from __future__ import annotations

from defectlab.registry import Registry

ANOMALY_MODELS: Registry[type] = Registry("anomaly model")
