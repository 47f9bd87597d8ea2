"""Predict defect types of new images with a trained attempt of an experiment run.

``Predictor(checkpoint).predict(paths)`` classifies whole files (a region-guided attempt crops each file
around its centre unless ``boxes`` are given; a region-pooled one pools over the whole image);
``predict_regions(image, boxes, masks)`` classifies regions of one image (an anomaly map's regions, a
mask's components) with exactly the crops the attempt was trained on (``defectlab.classify.regions``) or,
for a region-pooled attempt, its features averaged over each region's mask (``defectlab.classify.pooled``).
The attempt defaults to the one with the highest test balanced accuracy in ``RUN/comparison.json``; in
k-fold mode the fold with the lowest best validation loss provides the checkpoint.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from defectlab.classify.data import decode_resized
from defectlab.classify.models import ModelConfig
from defectlab.classify.regions import CropBox, region_crop
from defectlab.classify.train import TrainConfig, build_setup, predict_logits
from defectlab.config import from_dict
from defectlab.data.io import load_pil
from defectlab.data.regions import Box
from defectlab.data.transforms import resize_ops
from defectlab.devices import resolve_device
from defectlab.errors import BadInputError


@dataclass(frozen=True)
class ClassPrediction:
    path: str
    label: str
    probability: float
    probabilities: dict[str, float]
    crop: CropBox | None = None  # region-guided: the crop classified, (x0, y0, x1, y1) image pixels


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
            ckpt = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise BadInputError(self.checkpoint, f"cannot load checkpoint ({first})") from None
        cfg = ckpt["config"]
        model_cfg = from_dict(ModelConfig, {**cfg["model"], "weights": "checkpoint"})
        self.train_cfg_ = from_dict(TrainConfig, cfg["train"])
        self.classes_ = list(cfg["classes"])
        self.setup_ = build_setup(model_cfg, self.train_cfg_, self.classes_, ckpt["class_counts"])
        state = ckpt["model"]
        if self.train_cfg_.probe == "linear":  # a linear probe saved before it standardised: identity scaler
            for key, value in self.setup_.model.state_dict().items():
                if key.endswith(("head.0.mean", "head.0.std")):
                    state.setdefault(key, value)
        self.setup_.model.load_state_dict(state)
        self.device_ = resolve_device(self.device, what="--device")
        self.setup_.model.to(self.device_)
        return self

    @property
    def region_guided(self) -> bool:
        """True when the attempt classifies a region rather than the whole image (``train.input``
        ``region``: a crop around it, ``pooled``: features averaged over its mask)."""
        if not hasattr(self, "setup_"):
            self.load()
        return self.train_cfg_.input in ("region", "pooled")

    def predict(self, paths: Sequence[str | Path | Image.Image],
                boxes: Sequence[Box | None] | None = None) -> list[ClassPrediction]:
        """One prediction per file or decoded PIL image (named by its ``filename`` or ``<image i>``);
        ``boxes`` (one region box or None per image) guide a region attempt."""
        if not hasattr(self, "setup_"):
            self.load()
        if boxes is not None and len(boxes) != len(paths):
            raise BadInputError(self.checkpoint, f"{len(boxes)} boxes for {len(paths)} images")
        t = self.train_cfg_
        names = [(getattr(p, "filename", "") or f"<image {i}>") if isinstance(p, Image.Image) else str(p)
                 for i, p in enumerate(paths)]
        if self.region_guided:
            out = []
            for i, (p, name) in enumerate(zip(paths, names, strict=True)):
                pil = p.convert("RGB") if isinstance(p, Image.Image) else load_pil(p, "RGB")
                box = boxes[i] if boxes is not None else None
                pred = self.predict_regions(v2.functional.pil_to_tensor(pil), [box])[0]
                out.append(ClassPrediction(name, pred.label, pred.probability, pred.probabilities, pred.crop))
            return out
        images = torch.stack([decode_resized(p if isinstance(p, Image.Image) else str(p), t.image_size, t.resize)
                              for p in paths])
        return self._predict(images, names, [None] * len(paths))

    def predict_regions(self, image: torch.Tensor | Image.Image | str | Path, boxes: Sequence[Box | None],
                        masks: Sequence[np.ndarray | None] | None = None) -> list[ClassPrediction]:
        """Class probabilities of regions of one image (``(x, y, w, h)`` boxes in its pixels; None: its
        centre), cut with the attempt's own crop settings. A region-pooled attempt averages its features over
        each region's ``masks`` entry ((H, W) bool in the image's pixels; None or no ``masks``: the filled
        box; no box either: the whole image). A whole-image attempt classifies the whole image once per box
        (it was not trained on crops)."""
        if not hasattr(self, "setup_"):
            self.load()
        t = self.train_cfg_
        name = str(image) if isinstance(image, (str, Path)) else "<image>"
        if isinstance(image, (str, Path)):
            image = load_pil(image, "RGB")
        if isinstance(image, Image.Image):
            image = v2.functional.pil_to_tensor(image.convert("RGB"))
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        if masks is not None and len(masks) != len(boxes):
            raise BadInputError(self.checkpoint, f"{len(masks)} masks for {len(boxes)} boxes")
        if t.input == "pooled":
            from defectlab.classify.pooled import box_mask, pooled_input

            h, w = int(image.shape[-2]), int(image.shape[-1])
            given = masks if masks is not None else [None] * len(boxes)
            regions = [m if m is not None else box_mask(b, w, h) for b, m in zip(boxes, given, strict=True)]
            if not regions:
                return []
            x = torch.stack([pooled_input(image, m, t.image_size, t.resize) for m in regions])
            return self._predict(x, [name] * len(regions), [None] * len(regions))
        if t.input != "region":
            whole = v2.Compose(resize_ops(t.image_size, t.resize))(image)
            return self._predict(whole[None].expand(len(boxes), -1, -1, -1), [name] * len(boxes), [None] * len(boxes))
        cut = [region_crop(image, b, t.image_size, margin=t.region_margin, min_side=t.region_min_side) for b in boxes]
        if not cut:
            return []
        return self._predict(torch.stack([c for c, _ in cut]), [name] * len(cut), [box for _, box in cut])

    def _predict(self, images: torch.Tensor, names: list[str], crops: list[CropBox | None]) -> list[ClassPrediction]:
        logits = predict_logits(self.setup_, images, batch_size=self.train_cfg_.eval_batch_size, device=self.device_)
        out = []
        for name, p, crop in zip(names, logits.softmax(1).tolist(), crops, strict=True):
            k = max(range(len(p)), key=p.__getitem__)
            out.append(ClassPrediction(name, self.classes_[k], p[k], dict(zip(self.classes_, p, strict=True)), crop))
        return out
