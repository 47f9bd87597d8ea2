"""The ONNX Runtime engine behind ``inspect`` and ``serve --engine onnx``: a ``Detector`` whose model step runs
the exported ``scorer.onnx`` (``defectlab export onnx RUN``) instead of torch.

The export writes ``RUN/onnx/``: ``features.onnx`` (the feature extractor), ``scorer.onnx`` (the whole
scorer, where the method allows) and ``onnx.json`` (what was exported, from which model file: its sha256 must
still match the run's, or the export is stale and refused).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectlab.anomaly.base import AnomalyOutput
from defectlab.anomaly.detector import META_FILE as DETECTOR_META
from defectlab.anomaly.detector import MODEL_FILE, Detector, inside_run, sha256_file
from defectlab.errors import BadInputError, ConfigError

ONNX_DIR = "onnx"
FEATURES_FILE = "features.onnx"
SCORER_FILE = "scorer.onnx"
META_FILE = "onnx.json"


def session(model_bytes_or_path: bytes | str, threads: int | None = None):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes_or_path, sess_options=opts, providers=["CPUExecutionProvider"])


def base_sha256(run_dir: Path) -> str:
    """sha256 of the run's model file (the one detector.json names)."""
    meta = json.loads((run_dir / DETECTOR_META).read_text())
    return sha256_file(inside_run(run_dir, meta.get("model_file", MODEL_FILE), run_dir / DETECTOR_META))


class OnnxDetector(Detector):
    """A ``Detector`` whose model step runs the exported ``scorer.onnx`` in onnxruntime (CPU)."""

    session: Any = None

    def predict_tensor(self, images: torch.Tensor) -> AnomalyOutput:
        if min(images.shape[-2:]) < self.min_input_side:
            h, w = images.shape[-2:]
            raise ConfigError(f"an input of {h}x{w} px is too small for the ONNX scorer: its smoothing needs "
                              f"at least {self.min_input_side} px per side")
        scores, maps = self.session.run(None, {"image": images.detach().cpu().numpy().astype(np.float32)})
        return AnomalyOutput(torch.from_numpy(scores), torch.from_numpy(maps))

    def info(self) -> dict[str, Any]:
        return {**super().info(), "onnx": self.onnx_meta}

    @classmethod
    def load(cls, run_dir: str | Path, *, onnx_dir: str | Path | None = None,  # type: ignore[override]
             threads: int | None = None) -> OnnxDetector:
        run_dir = Path(run_dir)
        base = Detector.load(run_dir)
        folder = Path(onnx_dir) if onnx_dir is not None else run_dir / ONNX_DIR
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise BadInputError(run_dir, f"no ONNX export in {folder} (run 'defectlab export onnx {run_dir}')")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise BadInputError(meta_path, f"unreadable ONNX export description ({exc})") from None
        if not isinstance(meta, dict) or meta.get("model_sha256") != base_sha256(run_dir):
            raise BadInputError(folder, "the ONNX export is stale: the run's model changed since it was exported "
                                        f"(run 'defectlab export onnx {run_dir}' again)")
        if not meta.get("scorer"):
            raise ConfigError(f"{base.method}: ONNX inference needs a whole-scorer export; only the feature "
                              "extractor is exportable for this method (use --engine torch)")
        det = cls(base.model, base.method, base.preprocess, base.thresholds, base.training)
        det.model_sha256 = base.model_sha256
        scorer = meta["scorer"].get("file") if isinstance(meta["scorer"], dict) else None
        scorer_path = inside_run(folder, scorer, meta_path)
        try:
            det.session = session(str(scorer_path), threads)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise BadInputError(scorer_path, f"cannot load ONNX model ({first})") from None
        det.onnx_meta = meta
        return det
