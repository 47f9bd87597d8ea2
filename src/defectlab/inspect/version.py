"""One version string per model, the same in ``/inspect`` responses, ``/health``, the access log and the
inspection records: ``<method>-<12 hex>``, the hex digits the start of the sha256 of what makes the model
score the way it does (the weights file's sha256, the thresholds, the preprocessing, the method config and,
for an inspection bundle, the checksum of every part). A refit or a new threshold gives a new version; the
engine that runs it (torch or ONNX) and the serving limits do not."""

from __future__ import annotations

import hashlib
import json
from typing import Any

IDENTITY_KEYS = ("method", "model_sha256", "thresholds", "config", "image_size", "resize", "mean", "std",
                 "standardize", "scale")
BUNDLE_KEYS = ("format", "classes", "rule", "parts", "refine", "classifier")


def model_version(info: dict[str, Any]) -> str:
    """``info``: what the engine's ``info()`` returns."""
    identity = {k: info.get(k) for k in IDENTITY_KEYS}
    bundle = info.get("bundle")
    if isinstance(bundle, dict):
        identity["bundle"] = {k: bundle.get(k) for k in BUNDLE_KEYS}
    text = json.dumps(identity, sort_keys=True, default=str)
    return f"{info.get('method') or 'model'}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def engine_version(engine: Any) -> str:
    """``model_version`` of a loaded engine (anything with ``info()``)."""
    return model_version(engine.info() if hasattr(engine, "info") else {})
