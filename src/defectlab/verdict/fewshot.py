"""Few-shot refinement: a light head on the frozen good-only detector's patch features, taught by a
handful of labelled defects per type.

Input per patch (the detector's stride-8 grid): the PatchCore patch features (``_embed``: the
EfficientNet-Lite0 mid-level layers) plus the detector's own anomaly map there, divided by its pixel
threshold, as a prior channel. Output per patch: softmax over ``background`` and each defect type. The
refined map is the mean of the head's defect probability (``1 - p(background)``, upsampled from the patch
grid) and the detector's full-resolution map scaled so that its pixel threshold sits at 0.5
(``detector_share``): the head adds what the detector cannot see (the interior of a band whose surface looks
good, as ``uneven`` on magnetic_tile), the detector keeps the small defects the coarse head grid blurs
(blowholes); bench/fewshot_curve.py compares the result with the detector alone and a U-Net. The type
probabilities come with it.
Supervision: the masks of the k labelled images per type (soft targets: the share of defect pixels under
each patch) and good images as negatives (all background).

k = 0 is the detector itself: ``Refiner.empty`` returns the detector's map unchanged, bit for bit.

Head: 1x1 conv -> 3x3 conv -> 3x3 conv (dilation 2) -> 1x1 conv, ``hidden`` channels (7 patches of
context on the grid, on top of the backbone's own receptive field: enough to see across a band whose
interior looks like good surface, as ``uneven`` on magnetic_tile). Inputs are standardised with the
training inputs' channel mean/std (buffers). Trained with AdamW on crops of the patch grid (``crop``),
mostly around labelled defects.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectlab.anomaly.base import AnomalyOutput
from defectlab.anomaly.detector import Detector
from defectlab.errors import ConfigError


@dataclass
class RefineConfig:
    shots: int = 5  # labelled groups (physical parts) per defect type; 0 = the detector alone
    hidden: int = 32  # head width
    steps: int = 400  # optimisation steps (each a mini-batch of whole images)
    batch: int = 8  # images per step
    lr: float = 3e-3
    weight_decay: float = 1e-2
    pos_weight: float = 5.0  # weight of a fully-defect patch relative to a background patch
    crop: int = 16  # each step sees a crop of this many patches per side (centred on a defect 70% of the time)
    max_good: int = 60  # good training images used as negatives at most
    quantile: float = 0.99  # refined threshold: this quantile of held-out good images' refined-map maxima
    min_threshold: float = 0.5  # (``refined_threshold``), at least the head's "as likely as background"
    seed: int = 0


def embed(det: Detector, images: torch.Tensor) -> tuple[torch.Tensor, AnomalyOutput]:
    """One backbone pass: the detector's patch features (B, C, h, w) and its usual output."""
    model = det.model
    if not hasattr(model, "predict_embedding"):
        raise ConfigError(
            f"few-shot refinement needs a patch-feature detector (patchcore), not '{det.method}'"
        )
    with torch.inference_mode():
        emb = model._embed(images)  # noqa: SLF001 - the detector's own feature step, shared on purpose
        return emb, model.predict_embedding(emb, tuple(images.shape[-2:]))


def head_input(emb: torch.Tensor, maps: torch.Tensor, pixel_threshold: float) -> torch.Tensor:
    """(B, C + 1, h, w): patch features + the detector map on the patch grid / its pixel threshold."""
    prior = F.adaptive_avg_pool2d(maps[:, None].float(), emb.shape[-2:]) / max(float(pixel_threshold), 1e-8)
    return torch.cat([emb.float(), prior], dim=1)


def grid_target(
    mask: np.ndarray | torch.Tensor, grid_hw: tuple[int, int], type_index: int, n_classes: int
) -> torch.Tensor:
    """(1 + T, h, w) soft target: share of defect pixels under each patch on channel ``type_index`` (1..T),
    the rest background (channel 0). ``type_index = 0`` (a good image) gives all background."""
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    frac = F.adaptive_avg_pool2d(m, grid_hw)[0, 0] if type_index > 0 else torch.zeros(grid_hw)
    target = torch.zeros((1 + n_classes, *grid_hw))
    target[0] = 1 - frac
    if type_index > 0:
        target[type_index] = frac
    return target


def _crop(x: torch.Tensor, t: torch.Tensor, size: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``size`` x ``size`` window of an image's grid (all of it when smaller), around a random defect
    patch 70% of the time when the image has one."""
    h, w = x.shape[-2:]
    ch, cw = min(size, h), min(size, w)
    defect = torch.nonzero(t[0] < 0.5)
    if len(defect) and rng.random() < 0.7:
        cy, cx = defect[rng.randrange(len(defect))].tolist()
        y0, x0 = min(max(cy - ch // 2, 0), h - ch), min(max(cx - cw // 2, 0), w - cw)
    else:
        y0, x0 = rng.randint(0, h - ch), rng.randint(0, w - cw)
    return x[:, y0:y0 + ch, x0:x0 + cw], t[:, y0:y0 + ch, x0:x0 + cw]


def refined_threshold(good_maxima: Sequence[float], quantile: float, floor: float = 0.5) -> float:
    """The refined gate's threshold from held-out good images' refined-map maxima (probabilities): the
    larger of their empirical ``quantile`` and the same quantile of a normal fitted to their logits, and at
    least ``floor``. An empirical 0.99 quantile of a few dozen images is close to their maximum and moves with
    which good parts happened to be held out; the fitted tail uses every score (magnetic_tile, thresholds from
    the ~40 held-out images of 10 tiles: 2.9% of the good test images flagged on average, up to 30%, by the
    empirical quantile; 0.8% by this rule; docs/notes/verdict-experiments.md)."""
    from defectlab.metrics import threshold_from_good

    s = np.clip(np.asarray(list(good_maxima), dtype=np.float64), 1e-6, 1 - 1e-6)
    threshold = max(threshold_from_good(s, quantile), floor)
    if s.size >= 3:
        z = np.log(s / (1 - s))
        tail = z.mean() + NormalDist().inv_cdf(min(quantile, 1 - 1e-9)) * z.std(ddof=1)
        threshold = max(threshold, float(1 / (1 + np.exp(-tail))))
    return float(threshold)


def detector_share(maps: torch.Tensor, pixel_threshold: float) -> torch.Tensor:
    """The detector's map at full resolution, scaled so that its pixel threshold sits at 0.5 (the head's
    "defect as likely as background")."""
    return maps.float() / (2 * max(float(pixel_threshold), 1e-8))


class Refiner(nn.Module):
    """The few-shot head. ``classes``: the defect types (channel i + 1 of the output is ``classes[i]``).

    Type probabilities per patch: the mean of the head's softmax over the types and a softmax over the
    cosine similarities to each type's prototype (``temperature``), the mean standardised feature of its
    labelled pixels (robust with one or two labelled parts, where the head alone overfits).
    """

    temperature = 10.0

    def __init__(self, in_channels: int, classes: Sequence[str], hidden: int = 32) -> None:
        super().__init__()
        self.classes = list(classes)
        self.in_channels, self.hidden = in_channels, hidden
        n_out = 1 + len(self.classes)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2),
            nn.GELU(),
            nn.Conv2d(hidden, n_out, 1),
        )
        self.register_buffer("mean_", torch.zeros(in_channels))
        self.register_buffer("std_", torch.ones(in_channels))
        self.register_buffer("threshold_", torch.tensor(0.5))  # refined-map threshold (set from good images)
        self.register_buffer("shots_", torch.zeros((), dtype=torch.long))
        self.register_buffer(
            "prototypes_", torch.zeros(len(self.classes), in_channels)
        )  # per type, unit norm

    @property
    def shots(self) -> int:
        return int(self.shots_)

    @classmethod
    def empty(cls, in_channels: int, classes: Sequence[str]) -> Refiner:
        """k = 0: no head; ``refine`` hands the detector's map back unchanged."""
        return cls(in_channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._standard(x))

    # -- fitting -----------------------------------------------------------------------------------------
    def fit(
        self,
        inputs: Sequence[torch.Tensor],
        targets: Sequence[torch.Tensor],
        cfg: RefineConfig,
        *,
        shots: int,
    ) -> Refiner:
        """``inputs``: per image (C + 1, h, w) from ``head_input``; ``targets``: (1 + T, h, w) from
        ``grid_target``. Whole images, sizes may differ."""
        if len(inputs) != len(targets) or not inputs:
            raise ConfigError("few-shot refinement needs at least one labelled image")
        torch.manual_seed(cfg.seed)
        for layer in self.net:  # the initial weights too come from the seed, not from the caller's RNG state
            if isinstance(layer, nn.Conv2d):
                layer.reset_parameters()
        rng = random.Random(cfg.seed)
        flat = torch.cat([x.flatten(1) for x in inputs], dim=1)
        self.mean_ = flat.mean(1)
        self.std_ = flat.std(1).clamp_min(1e-4)
        self.shots_.fill_(shots)
        opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.steps))
        order = list(range(len(inputs)))
        self.train()
        for _ in range(cfg.steps):
            picks = rng.sample(order, min(cfg.batch, len(order)))
            loss = torch.zeros(())
            for i in picks:
                x, t = _crop(inputs[i], targets[i], cfg.crop, rng)
                logits = self(x[None])[0]
                weight = 1 + (cfg.pos_weight - 1) * (1 - t[0])
                ce = -(t * F.log_softmax(logits, dim=0)).sum(0)
                loss = loss + (weight * ce).sum() / weight.sum()
            opt.zero_grad()
            (loss / len(picks)).backward()
            opt.step()
            sched.step()
        self.prototypes_ = self._prototypes(inputs, targets)
        self.eval()
        return self

    def _prototypes(self, inputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per type, the mean standardised feature under its labelled defect pixels (unit norm; zero when
        a type has no labelled pixel)."""
        sums = torch.zeros(len(self.classes), self.in_channels)
        for x, t in zip(inputs, targets, strict=True):
            z = self._standard(x[None])[0].flatten(1)  # (C, h*w)
            sums += t[1:].flatten(1) @ z.T
        return F.normalize(sums, dim=1)

    def _standard(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean_.view(1, -1, 1, 1)) / self.std_.view(1, -1, 1, 1)

    def set_threshold(self, good_maxima: Sequence[float], cfg: RefineConfig) -> None:
        self.threshold_.fill_(refined_threshold(good_maxima, cfg.quantile, cfg.min_threshold))

    # -- inference ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def refine(
        self, emb: torch.Tensor, out: AnomalyOutput, pixel_threshold: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(refined maps (B, H, W) at the input size, type probabilities (B, T, H, W) or None at k = 0)."""
        if self.shots == 0:
            return out.maps, None
        size = tuple(out.maps.shape[-2:])
        x = head_input(emb, out.maps, pixel_threshold)
        logits = self(x)
        defect = F.softmax(logits, dim=1)[:, 1:].sum(1, keepdim=True)  # not 1 - p(bg): no rounding to 0
        head_types = F.softmax(logits[:, 1:], dim=1)
        sim = torch.einsum("bchw,tc->bthw", F.normalize(self._standard(x), dim=1), self.prototypes_)
        types = (head_types + F.softmax(self.temperature * sim, dim=1)) / 2  # head and nearest prototype
        up = F.interpolate(torch.cat([defect, types], 1), size=size, mode="bilinear", align_corners=False)
        return (up[:, 0] + detector_share(out.maps, pixel_threshold)) / 2, up[:, 1:]

    def describe(self) -> dict:
        return {
            "classes": self.classes,
            "in_channels": self.in_channels,
            "hidden": self.hidden,
            "shots": self.shots,
            "threshold": float(self.threshold_),
        }
