"""The ONNX Runtime engine behind ``inspect``, ``serve --engine onnx`` and ``defectlab-runtime``: the shared
detector core (``defectlab.runtime.detector``) whose model step runs the exported ``scorer.onnx``
(``defectlab export onnx RUN``). Torch-free: numpy, Pillow and onnxruntime only.

The export writes ``RUN/onnx/``: ``features.onnx`` (the feature extractor), ``scorer.onnx`` (the whole
scorer, where the method allows) and ``onnx.json`` (what was exported, from which model file: its sha256 must
still match the run's, or the export is stale and refused).

Devices: the CPU, or a CUDA GPU when the installed onnxruntime has the CUDA provider (the
``onnxruntime-gpu`` package); ``auto`` takes CUDA when that provider is there, else the CPU. MPS is not an
ONNX Runtime device (``--engine torch`` runs there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from defectlab.errors import BadInputError, ConfigError
from defectlab.runtime.detector import DetectorCore, inside_run

ONNX_DIR = "onnx"
FEATURES_FILE = "features.onnx"
SCORER_FILE = "scorer.onnx"
META_FILE = "onnx.json"
CUDA = "CUDAExecutionProvider"


def providers(device: str | None = "cpu") -> list[Any]:
    """onnxruntime execution providers for ``device`` (``auto | cpu | cuda[:N]``); ConfigError otherwise."""
    import onnxruntime as ort

    name = (device or "cpu").strip().lower()
    has_cuda = CUDA in ort.get_available_providers()
    if name == "cpu" or (name == "auto" and not has_cuda):
        return ["CPUExecutionProvider"]
    if name == "auto" or name == "cuda" or name.startswith("cuda:"):
        if not has_cuda:
            raise ConfigError(f"--device '{name}': this onnxruntime has no CUDA provider (install "
                              "onnxruntime-gpu, or use --device cpu, or --engine torch)")
        index = name.partition(":")[2] or "0"
        if not index.isdigit():
            raise ConfigError(f"--device '{name}' unknown; use auto, cpu, cuda or cuda:N")
        return [(CUDA, {"device_id": int(index)}), "CPUExecutionProvider"]
    if name == "mps":
        raise ConfigError("--device mps: the ONNX engine runs on the CPU or CUDA; use --engine torch for MPS")
    raise ConfigError(f"--device '{name}' unknown; use auto, cpu, cuda or cuda:N")


def session(model_bytes_or_path: bytes | str, threads: int | None = None, device: str | None = "cpu"):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # no memory pattern: it plans and keeps one block per input shape, and "native" inputs vary in size; the
    # arena stays (allocation speed). Scoring magnetic_tile's test images: peak RSS 265 -> 208 MB, same CPU
    opts.enable_mem_pattern = False
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes_or_path, sess_options=opts, providers=providers(device))


class OnnxDetector(DetectorCore):
    """The detector core whose model step runs the exported ``scorer.onnx`` in onnxruntime."""

    session: Any = None
    onnx_meta: dict[str, Any] = {}

    def predict_array(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores (B,), maps (B, H, W)) of a (B, 3, H, W) float32 batch."""
        if min(images.shape[-2:]) < self.min_input_side:
            h, w = images.shape[-2:]
            raise ConfigError(f"an input of {h}x{w} px is too small for the ONNX scorer: its smoothing needs "
                              f"at least {self.min_input_side} px per side")
        scores, maps = self.session.run(None, {"image": np.ascontiguousarray(images, dtype=np.float32)})
        return scores, maps

    def score_inputs(self, inputs: list[np.ndarray]) -> tuple[list[float], list[np.ndarray]]:
        scores, maps = self.predict_array(np.stack(inputs))
        return np.asarray(scores, dtype=np.float32).tolist(), list(np.asarray(maps, dtype=np.float32))

    def info(self) -> dict[str, Any]:
        device = "cuda" if self.session is not None and self.session.get_providers()[0] == CUDA else "cpu"
        return {**super().info(), "onnx": self.onnx_meta, "device": device}

    @classmethod
    def load(cls, run_dir: str | Path, *, onnx_dir: str | Path | None = None,  # type: ignore[override]
             threads: int | None = None, device: str | None = "cpu") -> OnnxDetector:
        run_dir = Path(run_dir)
        base = DetectorCore.read(run_dir)
        folder = Path(onnx_dir) if onnx_dir is not None else run_dir / ONNX_DIR
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise BadInputError(run_dir, f"no ONNX export in {folder} "
                                         f"(run 'defectlab export onnx {run_dir}')")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise BadInputError(meta_path, f"unreadable ONNX export description ({exc})") from None
        if not isinstance(meta, dict) or meta.get("model_sha256") != base.model_sha256:
            raise BadInputError(folder, "the ONNX export is stale: the run's model changed since it was "
                                        f"exported (run 'defectlab export onnx {run_dir}' again)")
        if not meta.get("scorer"):
            raise ConfigError(f"{base.method}: ONNX inference needs a whole-scorer export; only the feature "
                              "extractor is exportable for this method (use --engine torch)")
        det = cls(base.method, base.preprocess, base.thresholds, base.training, base.model_config(),
                  base.model_summary())
        det.model_sha256 = base.model_sha256
        scorer = meta["scorer"].get("file") if isinstance(meta["scorer"], dict) else None
        scorer_path = inside_run(folder, scorer, meta_path)
        try:
            det.session = session(str(scorer_path), threads, device)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise BadInputError(scorer_path, f"cannot load ONNX model ({first})") from None
        det.onnx_meta = meta
        return det
