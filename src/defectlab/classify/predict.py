"""Predict defect types of new images with a trained attempt of an experiment run.

The attempt defaults to the one with the highest test balanced accuracy in ``RUN/comparison.json``;
in k-fold mode the fold with the lowest best validation loss provides the checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from defectlab.classify.data import decode_resized
from defectlab.classify.models import ModelConfig
from defectlab.classify.train import TrainConfig, build_setup, predict_logits, resolve_device
from defectlab.config import from_dict
from defectlab.errors import BadInputError


@dataclass(frozen=True)
class ClassPrediction:
    path: str
    label: str
    probability: float
    probabilities: dict[str, float]


def pick_checkpoint(run: str | Path, attempt: str | None = None) -> Path:
    run = Path(run)
    table = run / "comparison.json"
    if attempt is None:
        if not table.is_file():
            raise BadInputError(run, "not a finished classify run (no comparison.json); name an --attempt")
        rows = json.loads(table.read_text())
        attempt = max(rows, key=lambda r: (r["balanced_acc"], r["macro_f1"]))["attempt"]
    adir = run / attempt
    if (adir / "best.pt").is_file():
        return adir / "best.pt"
    folds = sorted(p for p in adir.glob("fold*/result.json"))
    if not folds:
        known = sorted(p.parent.name for p in run.glob("*/config.yaml"))
        raise BadInputError(adir, f"no trained checkpoint here; attempts in this run: {', '.join(known) or 'none'}")
    best = min(folds, key=lambda p: json.loads(p.read_text())["best_val_loss"])
    return best.parent / "best.pt"


class Predictor:
    """``Predictor(checkpoint).predict(paths)`` -> one ClassPrediction per image."""

    def __init__(self, checkpoint: str | Path, *, device: str = "auto") -> None:
        self.checkpoint = Path(checkpoint)
        self.device = device

    def load(self) -> Predictor:
        """Rebuild the model (and its long-tail method wrapper) and load the checkpoint's weights."""
        try:
            ckpt = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError) as exc:
            raise BadInputError(self.checkpoint, f"cannot load checkpoint ({exc})") from None
        cfg = ckpt["config"]
        model_cfg = from_dict(ModelConfig, {**cfg["model"], "weights": "checkpoint"})
        self.train_cfg_ = from_dict(TrainConfig, cfg["train"])
        self.classes_ = list(cfg["classes"])
        self.setup_ = build_setup(model_cfg, self.train_cfg_, self.classes_, ckpt["class_counts"])
        self.setup_.model.load_state_dict(ckpt["model"])
        self.device_ = resolve_device(self.device)
        self.setup_.model.to(self.device_)
        return self

    def predict(self, paths: Sequence[str | Path | Image.Image]) -> list[ClassPrediction]:
        """Paths or decoded PIL images (a PIL image's path is its ``filename`` or ``<image i>``)."""
        if not hasattr(self, "setup_"):
            self.load()
        t = self.train_cfg_
        images = torch.stack([decode_resized(p if isinstance(p, Image.Image) else str(p), t.image_size,
                                             t.resize) for p in paths])
        paths = [getattr(p, "filename", "") or f"<image {i}>" if isinstance(p, Image.Image) else p
                 for i, p in enumerate(paths)]
        probs = predict_logits(self.setup_, images, batch_size=t.eval_batch_size, device=self.device_).softmax(1)
        out = []
        for path, p in zip(paths, probs.tolist(), strict=True):
            k = max(range(len(p)), key=p.__getitem__)
            out.append(ClassPrediction(str(path), self.classes_[k], p[k], dict(zip(self.classes_, p, strict=True))))
        return out
