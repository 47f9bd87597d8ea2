"""Training one classifier: config, optimizers and LR schedules by name, the epoch loop, checkpoints.

Everything random in epoch ``e`` (batch order, augmentation, dropout) is drawn from torch's global
generator seeded with ``(seed, e)``, so a run resumed from its epoch-``e`` checkpoint is identical to
one that was never interrupted, and the same seed gives the same numbers on a CPU.

Long-tail methods (hook for ``defectlab.imbalance``)
----------------------------------------------------
``TrainConfig.method`` / ``method_params`` / ``loss`` / ``loss_params`` build a method through
``defectlab.imbalance.method.build_method`` (``"plain"`` = ordinary training with any loss of
``defectlab.imbalance.LOSSES``; ``label_smoothing`` is passed to the loss when it is > 0). The trainer:

1. ``model = method.wrap_model(classifier, num_classes, class_counts)`` before building the optimizer
   (every trainable parameter must live in the returned module; it is what is checkpointed);
2. per batch, ``outputs = model(x)`` with ``x`` of shape ``(B, 3, H, W)``, or ``(B, V, 3, H, W)`` when
   ``method.views == V > 1`` (V independent augmentation draws of each image, made by the trainer's
   batch augmentation; ``method.wrap_transform`` is not used because images are augmented per batch);
   ``loss = method.loss(outputs, targets)``; ``logits = method.predict_logits(outputs)`` for accuracy;
3. in eval mode ``method.predict_logits(model(x))`` are the ``(B, C)`` logits used for validation,
   test and prediction. The validation loss is plain cross-entropy of those logits (no smoothing, no
   re-weighting), so attempts with different losses are compared on the same scale.

The classifier exposes ``forward_features(x) -> (B, D)`` and ``head`` (dropout + linear) for methods
that need features. ``sampler`` names a ``defectlab.imbalance.SAMPLERS`` entry (``"instance"``: each
image once per epoch); it is rebuilt each epoch after seeding, with ``(labels, **sampler_params)``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from defectlab import distributed
from defectlab.classify.data import BatchAugment, ImageSet
from defectlab.classify.models import Classifier, L2Normalize, ModelConfig, Standardize, build_classifier
from defectlab.config import atomic_path, atomic_write_text, to_dict
from defectlab.devices import resolve_device
from defectlab.errors import ConfigError
from defectlab.registry import Registry

log = logging.getLogger(__name__)

# seconds: the whole epoch (training pass, validation, checkpoints); train_s: the training pass only.
EPOCH_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "train_s")


@dataclass
class TrainConfig:
    epochs: int = 10  # maximum number of epochs (early stopping may end sooner)
    batch_size: int = 32
    lr: float = 1e-3  # peak learning rate (after warm-up)
    optimizer: str = "adam"  # adam | adamw | sgd (with momentum) | rmsprop
    momentum: float = 0.9  # sgd and rmsprop
    weight_decay: float = 0.0
    scheduler: str = "none"  # none | cosine | step (per epoch)
    step_size: int = 10  # step scheduler: multiply the lr by gamma every step_size epochs
    gamma: float = 0.1
    warmup_epochs: int = 0  # linear warm-up from lr/(warmup+1) to lr
    image_size: int = 64  # images are resized to image_size x image_size
    resize: str = "squash"  # squash | letterbox | crop
    augment: str = "none"  # none | basic (flips, rotation, crop) | strong (+ colour jitter, erasing)
    label_smoothing: float = 0.0
    patience: int = 0  # early stopping: stop after this many epochs without improvement (0: off)
    monitor: str = "val_loss"  # val_loss | val_acc: picks the best checkpoint and drives early stopping
    seed: int = 0
    deterministic: bool = True  # torch deterministic algorithms (warn-only where none exist)
    device: str = "auto"  # auto (cuda, else mps, when present) | cpu | cuda[:N] | mps (defectlab.devices)
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    eval_batch_size: int = 64
    method: str = "plain"  # a defectlab.imbalance METHODS name
    method_params: dict[str, Any] = field(default_factory=dict)
    loss: str = "ce"  # a defectlab.imbalance LOSSES name
    loss_params: dict[str, Any] = field(default_factory=dict)
    sampler: str = "instance"  # a defectlab.imbalance SAMPLERS name
    sampler_params: dict[str, Any] = field(default_factory=dict)
    input: str = "whole"  # whole | region: a crop around the defect (defectlab.classify.regions) | pooled:
    #                       features averaged over the defect mask (defectlab.classify.pooled; probes only)
    region_margin: float = 0.25  # region crops: margin around the region box, per side, x its longer side
    region_min_side: int = 48  # region crops: smallest crop side in image pixels
    probe: str = "none"  # none | linear | prototype: fit only a head on frozen, cached features (no epochs)
    regions_from: str | None = None  # pooled: an anomaly run; also train on the regions its detector finds
    tta: str = "none"  # none | flips: average the softmax over horizontal/vertical flips at evaluation


# ------------------------------------------------------------------------------- optimizers, schedules
OPTIMIZERS: Registry[Callable[[list[nn.Parameter], TrainConfig], torch.optim.Optimizer]] = Registry("optimizer")
# Fused kernels where torch has them: one kernel per step instead of one per tensor (far faster on CPU).
OPTIMIZERS.register("adam")(lambda p, c: torch.optim.Adam(p, lr=c.lr, weight_decay=c.weight_decay, fused=True))
OPTIMIZERS.register("adamw")(lambda p, c: torch.optim.AdamW(p, lr=c.lr, weight_decay=c.weight_decay, fused=True))
OPTIMIZERS.register("sgd")(lambda p, c: torch.optim.SGD(p, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                                                        nesterov=c.momentum > 0, fused=True))
OPTIMIZERS.register("rmsprop")(lambda p, c: torch.optim.RMSprop(p, lr=c.lr, momentum=c.momentum,
                                                                weight_decay=c.weight_decay))

# Each schedule maps (epoch index after warm-up, epochs after warm-up, config) to a factor on ``lr``.
SCHEDULERS: Registry[Callable[[int, int, TrainConfig], float]] = Registry("scheduler")
SCHEDULERS.register("none")(lambda e, n, c: 1.0)
SCHEDULERS.register("cosine")(lambda e, n, c: 0.5 * (1.0 + math.cos(math.pi * e / max(1, n))))
SCHEDULERS.register("step")(lambda e, n, c: c.gamma ** (e // max(1, c.step_size)))


INPUTS = ("whole", "region", "pooled")
PROBES = ("none", "linear", "prototype")
TTAS = ("none", "flips")


def lr_at(epoch: int, cfg: TrainConfig) -> float:
    """Learning rate of 0-based ``epoch``: linear warm-up, then the named schedule."""
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    return cfg.lr * SCHEDULERS.get(cfg.scheduler)(epoch - cfg.warmup_epochs, cfg.epochs - cfg.warmup_epochs, cfg)


def check_config(cfg: TrainConfig) -> None:
    """Every name and range of the config, checked before any image is decoded."""
    from defectlab.data.transforms import augment_ops, resize_ops

    OPTIMIZERS.get(cfg.optimizer)
    SCHEDULERS.get(cfg.scheduler)
    augment_ops(cfg.augment)
    resize_ops(cfg.image_size, cfg.resize)
    for name, allowed in (("input", INPUTS), ("probe", PROBES), ("tta", TTAS)):
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"train.{name} must be one of {', '.join(allowed)}, got '{getattr(cfg, name)}'")
    if cfg.input == "pooled" and cfg.probe == "none":
        raise ConfigError("train.input: pooled takes a probe on frozen features: set train.probe to linear "
                          "or prototype")
    if cfg.regions_from is not None and cfg.input != "pooled":
        raise ConfigError("train.regions_from (an anomaly run's regions) needs train.input: pooled")
    if cfg.region_margin < 0 or cfg.region_min_side < 1:
        raise ConfigError("train: need region_margin >= 0 and region_min_side >= 1")
    if cfg.monitor not in ("val_loss", "val_acc"):
        raise ConfigError(f"train.monitor must be val_loss or val_acc, got '{cfg.monitor}'")
    for name in ("epochs", "batch_size", "image_size", "eval_batch_size"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            raise ConfigError(f"train.{name} must be a positive integer, got {getattr(cfg, name)!r}")
    if not cfg.lr > 0 or cfg.weight_decay < 0 or not 0 <= cfg.label_smoothing < 1 or cfg.patience < 0:
        raise ConfigError("train: need lr > 0, weight_decay >= 0, 0 <= label_smoothing < 1, patience >= 0")
    resolve_device(cfg.device, what="train.device")
    _imbalance().method.check_options(cfg.method, cfg.method_params, loss=cfg.loss,
                                      loss_params=_loss_params(cfg), sampler=cfg.sampler,
                                      sampler_params=cfg.sampler_params)


def _imbalance() -> Any:
    import defectlab.imbalance.losses
    import defectlab.imbalance.method
    import defectlab.imbalance.samplers

    return defectlab.imbalance


def _loss_params(cfg: TrainConfig) -> dict[str, Any]:
    loss_params = dict(cfg.loss_params)
    if cfg.label_smoothing > 0:
        loss_params.setdefault("label_smoothing", cfg.label_smoothing)
    return loss_params


def build_method(cfg: TrainConfig) -> Any:
    return _imbalance().method.build_method(cfg.method, cfg.method_params, loss=cfg.loss,
                                            loss_params=_loss_params(cfg))


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same folder, then rename: a kill never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def seed_everything(seed: int, epoch: int = -1) -> None:
    torch.manual_seed(seed * 1_000_003 + epoch + 1)


@dataclass
class Setup:
    """A classifier wrapped by its method, with what prediction needs to rebuild it."""

    model: nn.Module
    classifier: Classifier
    method: Any
    augment: BatchAugment
    tta: str = "none"


def build_setup(model_cfg: ModelConfig, cfg: TrainConfig, classes: list[str], class_counts: list[int]) -> Setup:
    seed_everything(cfg.seed)
    classifier = build_classifier(model_cfg, num_classes=len(classes), image_size=cfg.image_size)
    method = build_method(cfg)
    if cfg.input == "pooled":
        from defectlab.classify.pooled import make_pooled

        make_pooled(classifier, model_cfg.name, cfg.image_size)
    if cfg.probe == "prototype":  # cosine similarity to class means: L2-normalised features, a bias-free linear
        classifier.head = nn.Sequential(L2Normalize(), nn.Linear(classifier.num_features, len(classes), bias=False))
    elif cfg.probe == "linear":  # on standardised features (training mean/std, saved with the head)
        classifier.head = nn.Sequential(Standardize(classifier.num_features), classifier.head[-1])
    model = method.wrap_model(classifier, len(classes), class_counts)
    return Setup(model, classifier, method, BatchAugment(cfg.augment, cfg.image_size, classifier.mean, classifier.std),
                 cfg.tta)


def tta_views(x: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The views a batch is evaluated on: itself, and with ``flips`` its horizontal and vertical mirrors."""
    return [x] if tta == "none" else [x, x.flip(-1), x.flip(-2)]


@torch.inference_mode()
def predict_logits(setup: Setup, images: torch.Tensor, *, batch_size: int, device: torch.device) -> torch.Tensor:
    """(N, C) float32 logits of cached uint8 images (eval mode, no augmentation)."""
    setup.model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = setup.augment(images[i:i + batch_size].to(device), train=False)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            views = [setup.method.predict_logits(setup.model(v)).float() for v in tta_views(x, setup.tta)]
        # several views: the log of the mean softmax (argmax = the class of the highest mean probability)
        logits = views[0] if len(views) == 1 else torch.stack([v.softmax(1) for v in views]).mean(0).log()
        out.append(logits.cpu())
    return torch.cat(out) if out else torch.empty(0)


class Trainer:
    """Train one attempt into ``out_dir`` (``epochs.csv``, ``last.pt``, ``best.pt``); resumes from
    ``last.pt`` when it exists and was written with the same config. ``fit`` returns self with
    ``setup_`` (best weights loaded), ``history_``, ``best_epoch_``, ``stopped_early_``, ``train_seconds_``.

    ``device`` (default: ``train.device``) is where it trains; it is not part of the config, so a run can
    resume on another device. Under ``torchrun`` with several processes it trains data-parallel
    (``defectlab.distributed``): every process draws the same epoch order from the sampler and takes a
    strided share of each global batch (``batch_size`` images per step in all, as with one process), DDP
    averages the gradients, the epoch's numbers are summed over processes (validation is sharded too, so
    every process takes the same best-epoch and stopping decisions), and process 0 alone writes files.
    """

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, classes: list[str], out_dir: str | Path,
                 *, progress: bool = True, on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
                 device: str | None = None) -> None:
        self.model_cfg = model_cfg
        self.train_cfg = train_cfg
        self.classes = classes
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        self.device = device

    def fit(self, train: ImageSet, val: ImageSet) -> Trainer:
        """Train (or resume); torch's process-wide determinism flags are restored afterwards."""
        saved = (torch.are_deterministic_algorithms_enabled(),
                 torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
        torch.use_deterministic_algorithms(self.train_cfg.deterministic, warn_only=True)
        torch.backends.cudnn.benchmark = not self.train_cfg.deterministic
        try:
            return self._fit(train, val)
        finally:
            torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
            torch.backends.cudnn.benchmark = saved[2]

    def _fit(self, train: ImageSet, val: ImageSet) -> Trainer:
        cfg, out = self.train_cfg, self.out_dir
        env = distributed.setup(self.device or cfg.device, what="train.device")
        device, rank0 = env.device, env.is_rank0
        if env.distributed and cfg.batch_size < 2 * env.world_size:
            raise ConfigError(f"train.batch_size {cfg.batch_size} is too small for {env.world_size} processes: "
                              "each needs at least 2 images per step (BatchNorm)")
        out.mkdir(parents=True, exist_ok=True)
        counts = torch.bincount(train.labels, minlength=len(self.classes)).tolist()
        setup = build_setup(self.model_cfg, cfg, self.classes, counts)
        model = setup.model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = OPTIMIZERS.get(cfg.optimizer)(params, cfg)
        use_amp = cfg.amp and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        config = {"model": to_dict(self.model_cfg), "train": to_dict(cfg), "classes": self.classes}
        state = {"epoch": 0, "history": [], "best_score": None, "best_epoch": 0, "bad_epochs": 0, "stopped": False}
        last = out / "last.pt"
        if last.is_file():
            ckpt = torch.load(last, map_location="cpu", weights_only=True)
            if ckpt["config"] != config:
                raise ConfigError(f"{out}: holds a run of another config; delete it or use another --out")
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            state = ckpt["state"]
            log.info("%s: resuming after epoch %d", out, state["epoch"])
        # DDP when distributed (its construction is a collective: every process has read last.pt by then);
        # ``setup.model`` stays the bare model that is evaluated and saved.
        net = distributed.wrap(model, env, find_unused=True)
        sign = 1.0 if cfg.monitor == "val_loss" else -1.0
        bar = tqdm(range(state["epoch"], cfg.epochs), desc=out.name, disable=not (self.progress and rank0),
                   initial=state["epoch"], total=cfg.epochs)
        for epoch in bar:
            if state["stopped"]:
                break
            t0 = time.perf_counter()
            lr = lr_at(epoch, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            seed_everything(cfg.seed, epoch)
            train_loss, train_acc = self._train_epoch(setup, net, optimizer, scaler, train, env, use_amp)
            train_s = time.perf_counter() - t0
            distributed.sync_buffers(model, env)  # BatchNorm statistics: process 0's everywhere
            val_loss, val_acc = self._validate(setup, val, env)
            row = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                   "val_loss": val_loss, "val_acc": val_acc,
                   "lr": lr, "seconds": time.perf_counter() - t0, "train_s": train_s}
            state["history"].append(row)
            state["epoch"] = epoch + 1
            score = sign * row[cfg.monitor]
            if state["best_score"] is None or score < state["best_score"]:
                state.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0)
                if rank0:
                    save_atomic({"model": model.state_dict(), "epoch": epoch + 1, "config": config,
                                 "class_counts": counts}, out / "best.pt")
            else:
                state["bad_epochs"] += 1
                state["stopped"] = 0 < cfg.patience <= state["bad_epochs"]
            if rank0:
                save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": {"name": cfg.scheduler, "last_epoch": epoch + 1, "lr": lr},
                             "scaler": scaler.state_dict(), "config": config, "class_counts": counts,
                             "state": state}, last)
                write_epochs_csv(out / "epochs.csv", state["history"])
            bar.set_postfix(loss=f"{train_loss:.3f}", val_loss=f"{row['val_loss']:.3f}",
                            val_acc=f"{row['val_acc']:.3f}")
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch + 1, row)
        bar.close()
        distributed.barrier(env)  # best.pt is written (by process 0) before anyone reads it
        best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(best["model"])
        self.setup_, self.device_ = setup, device
        self.history_ = state["history"]
        self.best_epoch_ = state["best_epoch"]
        self.stopped_early_ = bool(state["stopped"])
        self.train_seconds_ = sum(r["seconds"] for r in self.history_)
        self.class_counts_ = counts
        return self

    def _validate(self, setup: Setup, val: ImageSet, env: distributed.DistEnv) -> tuple[float, float]:
        """(loss, accuracy) on the validation set; distributed: each process its strided share, summed."""
        cfg = self.train_cfg
        if not env.distributed:
            logits = predict_logits(setup, val.images, batch_size=cfg.eval_batch_size, device=env.device)
            return (F.cross_entropy(logits, val.labels).item(),
                    (logits.argmax(1) == val.labels).float().mean().item())
        images, labels = val.images[env.rank::env.world_size], val.labels[env.rank::env.world_size]
        loss_sum, correct = 0.0, 0.0
        if len(labels):
            logits = predict_logits(setup, images, batch_size=cfg.eval_batch_size, device=env.device)
            loss_sum = F.cross_entropy(logits, labels, reduction="sum").item()
            correct = float((logits.argmax(1) == labels).sum())
        loss_sum, correct, n = distributed.all_reduce_sum([loss_sum, correct, float(len(labels))], env)
        return loss_sum / max(1.0, n), correct / max(1.0, n)

    def _train_epoch(self, setup: Setup, net: nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, data: ImageSet, env: distributed.DistEnv,
                     use_amp: bool) -> tuple[float, float]:
        cfg, device = self.train_cfg, env.device
        sampler = _imbalance().samplers.SAMPLERS.get(cfg.sampler)(data.labels.tolist(), **cfg.sampler_params)
        order = torch.as_tensor(list(iter(sampler)), dtype=torch.long)
        views = int(getattr(setup.method, "views", 1))
        setup.model.train()
        total_loss, correct, seen = 0.0, 0, 0
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        smallest = 2 * env.world_size if env.distributed else 2  # BatchNorm cannot train on a batch of one
        if len(batches) > 1 and len(batches[-1]) < smallest:
            batches = batches[:-1]
        if env.distributed:  # every process drew the same order: each takes its share of each batch and
            batches = [b[env.rank::env.world_size] for b in batches]  # its own augmentation draws
            torch.manual_seed(torch.initial_seed() + 7919 * (env.rank + 1))
        for idx in tqdm(batches, desc="batches", leave=False, disable=not (self.progress and env.is_rank0)):
            images, targets = data.images[idx].to(device), data.labels[idx].to(device)
            x = setup.augment(images) if views == 1 else torch.stack([setup.augment(images) for _ in range(views)], 1)
            with torch.autocast(device.type, enabled=use_amp):
                outputs = net(x)
                loss = setup.method.loss(outputs, targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                logits = setup.method.predict_logits(outputs)
                correct += int((logits.argmax(1) == targets).sum())
            total_loss += float(loss.detach()) * len(idx)
            seen += len(idx)
        if env.distributed:
            total_loss, correct, seen = distributed.all_reduce_sum([total_loss, correct, seen], env)
        return total_loss / max(1, seen), correct / max(1, seen)


def write_epochs_csv(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EPOCH_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())
