"""ONNX export of a fitted anomaly run, and an ONNX Runtime detector with the torch detector's behaviour.

``export_onnx(RUN)`` writes into ``RUN/onnx/``:

* ``features.onnx``: the backbone cut at the method's feature layers, ``image (B,3,H,W) -> one output per
  layer`` (any feature-based method); batch, height and width are free (``native`` inputs vary in size);
* ``scorer.onnx``: the whole scorer where the method allows it, ``image -> scores (B,), maps (B,H,W)``.
  PatchCore is exportable end to end: patch embedding, nearest-neighbour distance to the memory bank as
  ``|q|^2 - 2 q.B^T + |B|^2`` (MatMul + ReduceMin, the torch path's own formula), the paper's re-weighting
  vectorised over the batch (ArgMax/Gather/TopK/Softmax), bilinear upsampling and the Gaussian blur;
* ``onnx.json``: what was exported, opset, the sha256 of the model file it came from (a re-fitted run makes
  the export stale: refused on load) and the largest |onnx - torch| difference seen at export.

``OnnxDetector.load(RUN)`` is a ``Detector`` whose tensor step runs ``scorer.onnx`` in onnxruntime; the
preprocessing, thresholds, map resizing and boxes are the detector's own.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defectlab.anomaly.base import AnomalyModel, AnomalyOutput
from defectlab.anomaly.detector import META_FILE as DETECTOR_META
from defectlab.anomaly.detector import MODEL_FILE, Detector, inside_run, sha256_file
from defectlab.anomaly.features import gaussian_blur, patch_embedding, upsample
from defectlab.config import atomic_path, write_json
from defectlab.errors import BadInputError, ConfigError

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"
FEATURES_FILE = "features.onnx"
SCORER_FILE = "scorer.onnx"
META_FILE = "onnx.json"
OPSET = 17


class FeatureGraph(nn.Module):
    """The backbone up to the method's feature layers (bypasses the inference-mode wrapper for tracing)."""

    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.extractor = model.features.extractor  # type: ignore[union-attr]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.extractor(x).values())


class PatchCoreGraph(nn.Module):
    """PatchCore's ``predict`` as one traceable graph (same formulas, re-weighting vectorised)."""

    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.extractor = model.features.extractor  # type: ignore[union-attr]
        self.cfg = model.config
        self.register_buffer("bank", model.memory_bank_.detach().clone())  # type: ignore[union-attr]
        self.register_buffer("bank_sq", model.bank_sq_.detach().clone())  # type: ignore[union-attr]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = patch_embedding(self.extractor(x), neighbourhood=self.cfg.neighbourhood,
                              max_dim=self.cfg.max_feature_dim)
        c = int(emb.shape[1])  # channels are fixed; height and width stay symbolic (any input size)
        q = emb.flatten(2).transpose(1, 2)  # (B, P, C)
        d2 = (q * q).sum(-1, keepdim=True) - 2 * (q @ self.bank.T) + self.bank_sq  # (B, P, N)
        d2min, idx = d2.min(dim=-1)
        patch = d2min.clamp_min(0).sqrt()  # (B, P)
        maps = gaussian_blur(upsample(patch.view_as(emb[:, 0]), x.shape[-2:]), self.cfg.sigma)
        p = patch.argmax(dim=1, keepdim=True)  # (B, 1) most anomalous patch
        s_star = patch.gather(1, p)[:, 0]
        k = min(int(self.cfg.num_neighbours), int(self.bank.shape[0]))
        if k <= 1:
            return s_star, maps
        m_idx = idx.gather(1, p)  # (B, 1) its nearest bank patch
        m_star = self.bank[m_idx[:, 0]]  # (B, C)
        d_bank = ((self.bank[None] - m_star[:, None]) ** 2).sum(-1)  # (B, N)
        d_bank = d_bank.scatter(1, m_idx, torch.full_like(s_star[:, None], -1.0))  # m* itself comes first
        support = torch.topk(d_bank, k, dim=1, largest=False).indices  # (B, k)
        q_p = q.gather(1, p[:, :, None].expand(-1, 1, c))  # (B, 1, C)
        d = ((self.bank[support] - q_p) ** 2).sum(-1).sqrt()  # (B, k)
        d = torch.cat([s_star[:, None], d[:, 1:]], dim=1)
        weight = 1 - torch.softmax(d, dim=1)[:, 0]
        return weight * s_star, maps


SCORER_GRAPHS = {"patchcore": PatchCoreGraph}


def _export(module: nn.Module, example: torch.Tensor, outputs: dict[str, dict[int, str]]) -> bytes:
    """Trace ``module`` on ``example``; batch, height and width of the image stay free (``outputs``: each
    output's free axes)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and legacy-exporter notices: the result is verified below
        torch.onnx.export(module.eval(), (example,), buf, dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=list(outputs),
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, **outputs})
    return buf.getvalue()


def _session(model_bytes_or_path: bytes | str, threads: int | None = None):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes_or_path, sess_options=opts, providers=["CPUExecutionProvider"])


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def export_onnx(run: str | Path, out: str | Path | None = None, *, verify_batch: int = 2) -> dict[str, Any]:
    """Export a fitted run to ONNX (see the module docstring); returns the summary written to onnx.json."""
    run = Path(run)
    det = Detector.load(run)
    model = det.model
    if not hasattr(model, "features"):
        raise ConfigError(f"{det.method}: no deep feature extractor to export (ONNX export supports the "
                          "feature-based methods)")
    out_dir = Path(out) if out is not None else run / ONNX_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    h, w = det.preprocess.image_size
    torch.manual_seed(0)  # checked at the fitted size and at another one ("native" inputs vary in size)
    examples = [torch.randn(verify_batch, 3, h, w), torch.randn(verify_batch, 3, h + h // 2, w + w // 4)]
    summary: dict[str, Any] = {"format": "defectlab-onnx/1", "method": det.method, "opset": OPSET,
                               "image_size": [h, w], "model_sha256": sha256_file(run / "model.safetensors")}
    feat = FeatureGraph(model)
    layers = list(model.features.layers)  # type: ignore[union-attr]
    free = {f"feat_{i}": {0: "batch", 2: f"height_{i}", 3: f"width_{i}"} for i in range(len(layers))}
    data = _export(feat, examples[0][:1], free)
    _write_bytes(out_dir / FEATURES_FILE, data)
    session, diff = _session(data), 0.0
    for x in examples:
        with torch.no_grad():
            ref = feat(x)
        got = session.run(None, {"image": x.numpy()})
        diff = max([diff] + [float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref)])
    summary["features"] = {"file": FEATURES_FILE, "layers": layers, "max_abs_diff": diff}
    graph_cls = SCORER_GRAPHS.get(det.method)
    if graph_cls is None:
        summary["scorer"] = None
        summary["note"] = f"{det.method}: only the feature extractor is exportable; its scoring stays in torch"
    else:
        data = _export(graph_cls(model), examples[0][:1], {"scores": {0: "batch"},
                                                           "maps": {0: "batch", 1: "height", 2: "width"}})
        _write_bytes(out_dir / SCORER_FILE, data)
        session, d_scores, d_maps = _session(data), 0.0, 0.0
        for x in examples:
            ref_out = det.predict_tensor(x)
            scores, maps = session.run(None, {"image": x.numpy()})
            d_scores = max(d_scores, float(np.abs(scores - ref_out.scores.numpy()).max()))
            d_maps = max(d_maps, float(np.abs(maps - ref_out.maps.numpy()).max()))
        summary["scorer"] = {"file": SCORER_FILE, "max_abs_diff_scores": d_scores, "max_abs_diff_maps": d_maps}
    write_json(out_dir / META_FILE, summary)
    return summary


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
            det.session = _session(str(scorer_path), threads)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise BadInputError(scorer_path, f"cannot load ONNX model ({first})") from None
        det.onnx_meta = meta
        return det
