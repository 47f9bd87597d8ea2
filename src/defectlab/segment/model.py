"""``Segmenter``: a U-Net fitted on images + masks (BCE + Dice), predicting per-pixel probabilities.

Binary mode has one output channel (defect vs background); ``multi`` mode has one sigmoid channel per
defect type, trained on the mask of the image's defect type (the other channels see background).
Images are squashed to ``size`` x ``size``; probabilities come back at each image's own size.

``device`` (fit, load): ``auto | cpu | cuda[:N] | mps`` (``defectlab.devices``). Under ``torchrun`` with
several processes, ``fit`` trains data-parallel (``defectlab.distributed``: DDP, each process a
``DistributedSampler`` share of ``batch_size // world_size`` images per step, so the global batch and the
steps per epoch stay those of one process); the loss history is summed over processes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from defectlab import distributed
from defectlab.config import atomic_path, from_dict, to_dict
from defectlab.data.dataset import DefectDataset
from defectlab.data.index import GOOD, SampleRecord
from defectlab.data.transforms import PairTransform
from defectlab.devices import resolve_device
from defectlab.errors import BadInputError, ConfigError
from defectlab.segment.losses import bce_dice_loss
from defectlab.segment.unet import build_unet

log = logging.getLogger(__name__)
MODES = ("binary", "multi")


@dataclass
class SegConfig:
    encoder: str = "small"  # small | mobilenet_v2
    weights: str = "none"  # encoder weights: none | imagenet | a file (mobilenet_v2 only)
    base: int = 16  # width of the small encoder's first level
    mode: str = "binary"  # binary | multi (one channel per defect type)
    size: int = 128  # input side (images are squashed to size x size)
    augment: str = "basic"  # none | basic | strong
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dice_weight: float = 1.0
    threshold: float = 0.5  # probability above which a pixel is defect
    test_fraction: float = 0.5  # share of each defect type's images held out (no manifest)
    max_good_train: int | None = 100  # good images (empty masks) used for training at most
    seed: int = 0
    num_threads: int = 2

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown segmentation mode '{self.mode}'; known: {', '.join(MODES)}")
        if self.size < 16 or self.epochs < 0 or self.batch_size < 1:
            raise ConfigError("size must be >= 16, epochs >= 0 and batch_size >= 1")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")


class Segmenter:
    def __init__(self, config: SegConfig | None = None) -> None:
        self.config = config or SegConfig()

    # ------------------------------------------------------------------------------------- fitting
    def _build(self, n_out: int, weights: str | None) -> torch.nn.Module:
        cfg = self.config
        w = None if weights in (None, "none", "random") and cfg.encoder == "small" else weights
        return build_unet(encoder=cfg.encoder, num_classes=n_out, base=cfg.base, weights=w)

    def fit(self, records: list[SampleRecord], defect_types: list[str] | None = None, *,
            device: str | torch.device = "auto") -> Segmenter:
        cfg = self.config
        env = distributed.setup(device)
        torch.manual_seed(cfg.seed)
        threads = cfg.num_threads // env.world_size if env.device.type == "cpu" else cfg.num_threads
        torch.set_num_threads(max(1, threads))
        self.classes_ = list(defect_types or sorted({r.defect_type for r in records} - {GOOD}))
        n_out = 1 if cfg.mode == "binary" else len(self.classes_)
        self.model_ = self._build(n_out, cfg.weights)
        net = distributed.wrap(self.model_, env)  # DDP when distributed; self.model_ stays the bare model
        class_to_idx = {GOOD: 0, **{c: i + 1 for i, c in enumerate(self.classes_)}}
        ds = DefectDataset(records, PairTransform(cfg.size, augment=cfg.augment), class_to_idx=class_to_idx)
        shard = None
        if env.distributed:
            shard = distributed.sampler(ds, env, seed=cfg.seed)
            per = max(1, cfg.batch_size // env.world_size)
            loader = DataLoader(ds, batch_size=per, sampler=shard, drop_last=len(shard) > per)
        else:
            gen = torch.Generator().manual_seed(cfg.seed)
            loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, generator=gen,
                                drop_last=len(ds) > cfg.batch_size)
        opt = torch.optim.AdamW(self.model_.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * len(loader)))
        self.history_: list[dict[str, float]] = []
        net.train()
        for epoch in range(cfg.epochs):
            if shard is not None:
                shard.set_epoch(epoch)
            t0, total, n = time.time(), 0.0, 0
            for batch in tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                              disable=not env.is_rank0):
                image = batch.image.to(env.device)
                target = self._target(batch.mask, batch.label, n_out).to(env.device)
                loss = bce_dice_loss(net(image), target, dice_weight=cfg.dice_weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(batch.image)
                n += len(batch.image)
            total, n = distributed.all_reduce_sum([total, n], env)
            self.history_.append({"epoch": epoch + 1, "loss": total / max(n, 1), "seconds": time.time() - t0})
            log.info("epoch %d loss %.4f", epoch + 1, total / max(n, 1))
        self.model_.eval()
        return self

    @staticmethod
    def _target(mask: torch.Tensor, label: torch.Tensor, n_out: int) -> torch.Tensor:
        if n_out == 1:
            return mask
        onehot = F.one_hot(label, n_out + 1)[:, 1:].float()  # good (0) -> all channels empty
        return mask * onehot[:, :, None, None]

    # ---------------------------------------------------------------------------------- predicting
    @property
    def device(self) -> torch.device:
        self._check()
        return next(self.model_.parameters()).device

    def _check(self) -> None:
        if not hasattr(self, "model_"):
            raise ConfigError("the segmenter is not fitted: call fit() or load a run")

    @torch.no_grad()
    def predict_proba(self, images: list[Image.Image], batch_size: int = 8) -> list[np.ndarray]:
        """Per image a (C, H, W) float32 probability array at the image's own size."""
        self._check()
        tf = PairTransform(self.config.size)
        out: list[np.ndarray] = []
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]
            x = torch.stack([tf(im.convert("RGB"), None)[0] for im in chunk])
            prob = torch.sigmoid(self.model_(x.to(self.device))).cpu()
            for im, p in zip(chunk, prob, strict=True):
                p = F.interpolate(p[None], size=(im.height, im.width), mode="bilinear",
                                  align_corners=False)[0]
                out.append(p.numpy().astype(np.float32))
        return out

    def predict(self, images: list[Image.Image]) -> list[np.ndarray]:
        """Per image an (H, W) bool defect mask (any channel above the threshold)."""
        return [p.max(axis=0) > self.config.threshold for p in self.predict_proba(images)]

    # ------------------------------------------------------------------------------------- saving
    def save(self, path: str | Path) -> None:
        """Atomic checkpoint: config, classes, weights, training history."""
        self._check()
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save({"config": to_dict(self.config), "classes": self.classes_,
                        "state_dict": self.model_.state_dict(), "history": self.history_}, tmp)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "auto") -> Segmenter:
        path = Path(path)
        if not path.is_file():
            raise BadInputError(path, "segmentation checkpoint not found")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            config = from_dict(SegConfig, ckpt["config"], where=str(path))
            self = cls(config)
            self.classes_ = list(ckpt["classes"])
            n_out = 1 if config.mode == "binary" else len(self.classes_)
            self.model_ = self._build(n_out, None)
            self.model_.load_state_dict(ckpt["state_dict"])
        except (RuntimeError, KeyError, OSError, EOFError) as exc:
            problem = f"not a defectlab segmentation checkpoint ({type(exc).__name__})"
            raise BadInputError(path, problem) from None
        self.history_ = list(ckpt.get("history", []))
        self.model_.to(resolve_device(device)).eval()
        return self
