"""A deployable detector: a fitted model + its preprocessing + thresholds + what it was trained on.

    >>> det = Detector.load("runs/tile")                  # refuses a modified or truncated model file
    >>> preds = det.predict_images(["a.png", pil_image])   # list[Prediction], maps at each image's size
    >>> det.info()                                         # method, backbone, weights, size, thresholds, data

On disk, in the run folder: ``model.safetensors`` (every tensor: network weights and fitted buffers; no
pickle) and ``detector.json`` (method name and config, preprocessing, thresholds, training summary, and
the sha256 of the tensor file, checked before loading). Both written atomically.

Thresholds (``Thresholds``): ``image`` is the deployable one, from good images only: the ``1 - false_alarm``
quantile (default 0.99) of the scores of held-out good training images (whole groups of near-duplicate
shots, never in the memory bank / not trained on), with the false-alarm rate to expect on new good parts
and its interval (``defectlab.anomaly.threshold``); ``pixel`` the same quantile of those images' map maxima,
used to draw regions (boxes, contours). ``image_f1``/``pixel_f1``, F1-optimal on a labelled test set, are
for reporting only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from defectlab.anomaly.base import AnomalyModel, AnomalyOutput
from defectlab.config import atomic_path, to_dict, write_json
from defectlab.data.transforms import standardize_intensity
from defectlab.devices import resolve_device
from defectlab.runtime.detector import (
    FORMAT,
    META_FILE,
    MODEL_FILE,
    DetectorCore,
    Thresholds,
    inside_run,
    read_run,
    restore_error,
    run_parts,
    same_size_runs,
    sha256_file,
)
from defectlab.runtime.preprocess import Preprocess
from defectlab.runtime.regions import boxes_from_map, scale_boxes


class NativeTransform:
    """``(PIL, mask | None) -> (3xhxw, 1xhxw)``: one fixed scale factor for all images, no padding, so a
    pixel keeps the same physical size in every image (one camera), whatever the crop's shape."""

    def __init__(self, scale: float, *, mean: Sequence[float], std: Sequence[float],
                 standardize: bool = False) -> None:
        self.scale, self.mean, self.std, self.standardize = scale, tuple(mean), tuple(std), standardize

    def __call__(self, image: Image.Image, mask: np.ndarray | None,
                 size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``size``: the (w, h) to resize to when ``image`` was reduced on load (else scale x its size)."""
        w, h = image.size
        if mask is None:
            mask = np.zeros((h, w), dtype=bool)
        size = size or (max(16, round(w * self.scale)), max(16, round(h * self.scale)))
        if size != (w, h):
            image = image.resize(size, Image.BILINEAR)
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        if self.standardize:
            x = standardize_intensity(x)
        x = (x - torch.tensor(self.mean).view(3, 1, 1)) / torch.tensor(self.std).view(3, 1, 1)
        return x.contiguous(), torch.from_numpy(np.ascontiguousarray(mask)).float()[None]


class Detector(DetectorCore):
    """The torch engine: the fitted model with the shared core (``defectlab.runtime.detector``: limits,
    decoding, maps back to the image, boxes). ``device``: where the model runs (``auto | cpu | cuda[:N] |
    mps``, ``defectlab.devices``); inputs are moved there and maps come back to the CPU."""

    def __init__(self, model: AnomalyModel, method: str, preprocess: Preprocess, thresholds: Thresholds,
                 training: dict[str, Any] | None = None, *, device: str | torch.device | None = None) -> None:
        super().__init__(method, preprocess, thresholds, training)
        self.model = model.eval()
        if device is not None:
            self.model.to(resolve_device(device, what="--device"))
        self._transform = preprocess.transform()

    @property
    def device(self) -> torch.device:
        """Where the model is (``anomaly.runner.place`` may move it later)."""
        return self.model.device

    def model_config(self) -> dict[str, Any]:
        return to_dict(self.model.config)

    def model_summary(self) -> dict[str, Any]:
        return self.model.summary()

    # -- inference ------------------------------------------------------------------------------------
    def predict_tensor(self, images: torch.Tensor) -> AnomalyOutput:
        return self.model.predict(images.to(self.model.device))

    def model_input(self, pil: Image.Image, name: str) -> torch.Tensor:
        size = self.checked_size(pil, name)
        if self.preprocess.variable_size:
            return self._transform(pil, None, size)[0]  # type: ignore[call-arg]
        return self._transform(pil, None)[0]

    def score_inputs(self, inputs: list[torch.Tensor]) -> tuple[list[float], list[np.ndarray]]:
        res = self.predict_tensor(torch.stack(inputs))
        return res.scores.tolist(), list(res.maps.detach().cpu().numpy())

    def info(self) -> dict[str, Any]:
        return {**super().info(), "device": str(self.device)}

    # -- persistence ----------------------------------------------------------------------------------
    def save(self, run_dir: str | Path, *, tensors: bool = True) -> Path:
        """Write ``model.safetensors`` (unless ``tensors=False``: only the JSON, e.g. new thresholds) and
        ``detector.json``, each atomically."""
        from dataclasses import asdict

        from safetensors.torch import save_file

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if tensors:
            state = {k: v.detach().cpu().contiguous().clone() for k, v in self.model.state_dict().items()}
            with atomic_path(run_dir / MODEL_FILE) as tmp:
                save_file(state, str(tmp))
                digest = sha256_file(tmp)
        else:
            digest = json.loads((run_dir / META_FILE).read_text())["model_sha256"]
        meta = {"format": FORMAT, "method": self.method, "config": to_dict(self.model.config),
                "preprocess": asdict(self.preprocess), "thresholds": asdict(self.thresholds),
                "training": self.training, "model_summary": self.model.summary(),
                "model_file": MODEL_FILE, "model_sha256": digest}
        write_json(run_dir / META_FILE, meta)
        return run_dir

    @classmethod
    def load(cls, run_dir: str | Path, *, device: str | torch.device | None = None) -> Detector:
        """A fitted run folder (its model file's checksum checked first); ``device`` as in ``__init__``
        (None: the CPU)."""
        from safetensors.torch import load_file

        from defectlab.anomaly import build_model

        run_dir = Path(run_dir)
        meta, model_path, digest = read_run(run_dir)
        try:
            state = load_file(str(model_path))
            model = build_model(meta["method"], meta["config"], pretrained=False)
            model.load_state_dict(state, strict=True)
            preprocess, thresholds = run_parts(meta)
        except Exception as exc:  # noqa: BLE001 - a run folder is data: any failure to restore it is one line
            raise restore_error(run_dir, exc) from None
        det = cls(model, meta["method"], preprocess, thresholds, meta.get("training", {}), device=device)
        det.model_sha256 = digest
        return det


__all__ = ["Detector", "NativeTransform", "Preprocess", "Thresholds", "boxes_from_map", "inside_run",
           "same_size_runs", "scale_boxes", "sha256_file", "FORMAT", "MODEL_FILE", "META_FILE"]
