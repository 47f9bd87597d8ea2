"""Small-data heads on a frozen backbone: a linear probe or a prototype (nearest class mean) classifier.

With a few dozen labelled images per type, fine-tuning millions of weights mostly fits noise; the
ImageNet features of a frozen backbone are often already separable. ``train.probe`` fits only the head,
on features extracted once per image (no epochs):

* ``linear``: a multinomial logistic regression (full-batch L-BFGS, L2 penalty ``train.weight_decay``,
  default 1e-3 when 0; classes weighted by inverse frequency, so rare types count as much as common ones)
  on standardised features (the training features' mean and standard deviation, kept in the head as
  ``Standardize``): the channels of a backbone differ widely in scale, and one L2 penalty on unscaled
  features regularises them unevenly (EfficientNet-Lite0, whole images, magnetic_tile grouped 5-fold:
  0.556 raw vs 0.688 standardised, ``bench/results/classify_probe_l2.json``);
* ``prototype``: cosine similarity to each class's mean L2-normalised feature (nearest class mean), the
  classic few-shot baseline: no parameters fitted at all.

Training features are taken of each image and of its horizontal, vertical and double flip (cheap,
label-preserving augmentation for surface defects). The fitted head is saved in ``best.pt`` in the same
format as a trained attempt, so ``classify predict`` and :class:`defectlab.classify.predict.Predictor`
load it unchanged. :class:`ProbeFitter` has :class:`defectlab.classify.train.Trainer`'s face.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from defectlab import distributed
from defectlab.classify.data import ImageSet
from defectlab.classify.models import ModelConfig
from defectlab.classify.train import (
    Setup,
    TrainConfig,
    build_setup,
    predict_logits,
    save_atomic,
    write_epochs_csv,
)
from defectlab.config import to_dict

PROTOTYPE_SCALE = 16.0  # cosine similarities in [-1, 1] times this are the logits (a softmax temperature)
# Frozen features of the last backbone/input used, per cached input: the folds of an experiment share images,
# so each image is passed through the backbone once per attempt family, not once per fold.
_CACHE: dict[str, object] = {"key": None, "features": {}}


@torch.no_grad()  # not inference_mode: the features are fitted on with autograd
def features(setup: Setup, images: torch.Tensor, *, batch_size: int, device: torch.device,
             flips: bool = False) -> torch.Tensor:
    """(N, D) pooled body features of cached uint8 images (``flips``: (4N, D), image then its 3 flips)."""
    setup.model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = setup.augment(images[i:i + batch_size].to(device), train=False)
        views = [x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)] if flips else [x]
        out.append(torch.stack([setup.classifier.forward_features(v).float() for v in views], 1).cpu())
    return torch.cat(out).flatten(0, 1) if out else torch.empty(0)


def fit_linear(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, *, l2: float,
               max_iter: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (C, D), bias (C,)) of a class-weighted multinomial logistic regression (L-BFGS)."""
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).float()
    weights = counts.sum() / (num_classes * counts)
    w = torch.zeros(num_classes, feats.shape[1], requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(feats @ w.T + b, labels, weight=weights) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def class_means(feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, D) L2-normalised mean of each class's L2-normalised features."""
    f = F.normalize(feats, dim=1)
    return F.normalize(torch.stack([f[labels == c].mean(0) for c in range(num_classes)]), dim=1)


class ProbeFitter:
    """Fit a probe head into ``out_dir`` (``best.pt``, ``epochs.csv``); the Trainer's attributes after ``fit``."""

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, classes: list[str], out_dir: str | Path,
                 *, progress: bool = True, on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
                 device: str | None = None) -> None:
        self.model_cfg = model_cfg
        self.train_cfg = train_cfg
        self.classes = classes
        self.out_dir = Path(out_dir)
        self.on_epoch_end = on_epoch_end
        self.device = device

    def fit(self, train: ImageSet, val: ImageSet) -> ProbeFitter:
        cfg, out = self.train_cfg, self.out_dir
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        # no training loop to share: under torchrun every process fits the same head, process 0 writes it
        env = distributed.setup(self.device or cfg.device, what="train.device")
        device = env.device
        counts = torch.bincount(train.labels, minlength=len(self.classes)).tolist()
        setup = build_setup(self.model_cfg, cfg, self.classes, counts)
        setup.classifier.freeze("all")
        setup.model.to(device)
        feats = self._train_features(setup, train, device)
        labels = train.labels.repeat_interleave(4)
        linear = setup.classifier.head[-1]
        if cfg.probe == "prototype":
            linear.weight.data.copy_(PROTOTYPE_SCALE * class_means(feats, labels, len(self.classes)))
        else:
            x = setup.classifier.head[0].fit(feats)(feats)  # the head's Standardize
            w, b = fit_linear(x, labels, len(self.classes), l2=cfg.weight_decay or 1e-3)
            linear.weight.data.copy_(w)
            linear.bias.data.copy_(b)
        train_s = time.perf_counter() - t0
        with torch.no_grad():
            train_logits = setup.classifier.head(feats[::4])  # the unflipped view of each training image
        val_logits = predict_logits(setup, val.images, batch_size=cfg.eval_batch_size, device=device)
        row = {"epoch": 1, "train_loss": F.cross_entropy(train_logits, train.labels).item(),
               "train_acc": (train_logits.argmax(1) == train.labels).float().mean().item(),
               "val_loss": F.cross_entropy(val_logits, val.labels).item(),
               "val_acc": (val_logits.argmax(1) == val.labels).float().mean().item(),
               "lr": 0.0, "seconds": time.perf_counter() - t0, "train_s": train_s}
        config = {"model": to_dict(self.model_cfg), "train": to_dict(cfg), "classes": self.classes}
        if env.is_rank0:
            save_atomic({"model": setup.model.state_dict(), "epoch": 1, "config": config, "class_counts": counts},
                        out / "best.pt")
            write_epochs_csv(out / "epochs.csv", [row])
        if self.on_epoch_end is not None:
            self.on_epoch_end(1, row)
        self.setup_, self.device_ = setup, device
        self.history_, self.best_epoch_, self.stopped_early_ = [row], 1, False
        self.train_seconds_ = row["seconds"]
        self.class_counts_ = counts
        return self

    def _train_features(self, setup: Setup, train: ImageSet, device: torch.device) -> torch.Tensor:
        """(4N, D) features of the training images and their flips, reusing the cache where it can (keyed
        by the cached input itself: one image with two region masks is two inputs)."""
        cfg = self.train_cfg
        key = repr((to_dict(self.model_cfg), cfg.image_size, cfg.resize, cfg.input, cfg.region_margin,
                    cfg.region_min_side))
        if _CACHE["key"] != key:
            _CACHE.update(key=key, features={})
        known: dict[str, torch.Tensor] = _CACHE["features"]  # type: ignore[assignment]
        digests = [hashlib.blake2b(img.numpy().tobytes(), digest_size=16).hexdigest() for img in train.images]
        todo = list({d: i for i, d in enumerate(digests) if d not in known}.values())
        if todo:
            new = features(setup, train.images[todo], batch_size=cfg.eval_batch_size, device=device, flips=True)
            for j, i in enumerate(todo):
                known[digests[i]] = new[4 * j:4 * j + 4]
        return torch.cat([known[d] for d in digests])
