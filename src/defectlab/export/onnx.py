"""ONNX export of a fitted anomaly run (the engine that runs it is ``defectlab.inspect.onnx_engine``).

``export_onnx(RUN)`` writes into ``RUN/onnx/``:

* ``features.onnx``: the backbone cut at the method's feature layers, ``image (B,3,H,W) -> one output per
  layer`` (any feature-based method); batch, height and width are free (``native`` inputs vary in size);
* ``scorer.onnx``: the whole scorer where the method allows it, ``image -> scores (B,), maps (B,H,W)``.
  PatchCore is exportable end to end: patch embedding, nearest bank row by ``|B|^2 - 2 q.B^T`` (MatMul +
  ArgMin) and the exact distance to it (``anomaly.search.torch_nearest``'s formulas), the re-weighted score
  (``patchcore.reweighted_score``, the same function the torch path runs), bilinear upsampling and the blur;
* ``onnx.json``: what was exported, opset, the sha256 of the model file it came from (a re-fitted run makes
  the export stale: refused on load) and the largest |onnx - torch| difference seen at export.

``defectlab.inspect.onnx_engine.OnnxDetector.load(RUN)`` runs ``scorer.onnx`` in onnxruntime with the
detector's own preprocessing, thresholds, map resizing and boxes.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defectlab.anomaly.base import AnomalyModel
from defectlab.anomaly.detector import Detector, sha256_file
from defectlab.anomaly.features import gaussian_blur, patch_embedding, upsample
from defectlab.anomaly.patchcore import reweighted_score
from defectlab.config import atomic_path, write_json
from defectlab.errors import ConfigError
from defectlab.inspect.onnx_engine import FEATURES_FILE, META_FILE, ONNX_DIR, SCORER_FILE, session

log = logging.getLogger(__name__)

OPSET = 17
BANK_CHUNK = 512  # memory-bank rows per distance block: the scorer holds a (B, P, BANK_CHUNK) matrix at a time


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
        q = emb.flatten(2).transpose(1, 2)  # (B, P, C)
        idx = nearest_rows(q, self.bank, self.bank_sq)  # (B, P): search.torch_nearest's argmin
        patch = ((q - self.bank[idx]) ** 2).sum(-1).sqrt()  # exact distance to the chosen row, as there
        maps = gaussian_blur(upsample(patch.view_as(emb[:, 0]), x.shape[-2:]), self.cfg.sigma)
        return reweighted_score(q, patch, idx, self.bank, self.bank_sq, self.cfg.num_neighbours), maps


def nearest_rows(q: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    """argmin over bank rows of ``|b|^2 - 2 q.b``, in blocks of ``BANK_CHUNK`` rows (the bank's size is fixed
    at export, so the blocks unroll into the graph): memory bounded by the block, not the bank; ties go to
    the first row, as one argmin over the whole bank."""
    def block(start: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = slice(start, start + BANK_CHUNK)
        return (bank_sq[rows] - 2 * (q @ bank[rows].T)).min(dim=-1)

    best_d, best_i = block(0)
    for start in range(BANK_CHUNK, bank.shape[0], BANK_CHUNK):
        d, i = block(start)
        better = d < best_d  # strict: an equal distance keeps the earlier row
        best_d, best_i = torch.where(better, d, best_d), torch.where(better, i + start, best_i)
    return best_i


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
    sess, diff = session(data), 0.0
    for x in examples:
        with torch.no_grad():
            ref = feat(x)
        got = sess.run(None, {"image": x.numpy()})
        diff = max([diff] + [float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref, strict=True)])
    summary["features"] = {"file": FEATURES_FILE, "layers": layers, "max_abs_diff": diff}
    graph_cls = SCORER_GRAPHS.get(det.method)
    if graph_cls is None:
        summary["scorer"] = None
        summary["note"] = f"{det.method}: only the feature extractor is exportable; its scoring stays in torch"
    else:
        data = _export(graph_cls(model), examples[0][:1], {"scores": {0: "batch"},
                                                           "maps": {0: "batch", 1: "height", 2: "width"}})
        _write_bytes(out_dir / SCORER_FILE, data)
        sess, d_scores, d_maps = session(data), 0.0, 0.0
        for x in examples:
            ref_out = det.predict_tensor(x)
            scores, maps = sess.run(None, {"image": x.numpy()})
            d_scores = max(d_scores, float(np.abs(scores - ref_out.scores.numpy()).max()))
            d_maps = max(d_maps, float(np.abs(maps - ref_out.maps.numpy()).max()))
        summary["scorer"] = {"file": SCORER_FILE, "max_abs_diff_scores": d_scores, "max_abs_diff_maps": d_maps}
    write_json(out_dir / META_FILE, summary)
    return summary
