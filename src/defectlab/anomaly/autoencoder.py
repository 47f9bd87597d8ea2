"""Convolutional autoencoder trained from scratch on good images (reconstruction error, L2 + SSIM).

The network (4 stride-2 convolutions down to 1/16 resolution and ``latent`` channels, 4 transposed
convolutions back) learns to reconstruct good images; the loss is ``L2 + ssim_weight * (1 - SSIM)``
(SSIM with an 11x11 Gaussian window, sigma 1.5, as in Bergmann et al. 2019, "Improving Unsupervised
Defect Segmentation by Applying Structural Similarity to Autoencoders"). Map = per-pixel squared error
(mean over channels) + ``ssim_weight * (1 - SSIM map)``, Gaussian-smoothed (sigma 4); image score = the
map maximum. No pretrained weights: ``weights`` does not apply. Inputs use ImageNet mean/std (so a
detector's preprocessing is the same as the others').
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from defectlab.anomaly.base import AnomalyModel, AnomalyOutput, image_batches
from defectlab.anomaly.features import gaussian_blur
from defectlab.anomaly.registry import ANOMALY_MODELS
from defectlab.errors import ConfigError


@dataclass
class AutoencoderConfig:
    width: int = 32  # channels of the first convolution (doubled twice)
    latent: int = 64  # bottleneck channels at 1/16 resolution
    epochs: int = 30
    lr: float = 2e-3
    ssim_weight: float = 1.0  # weight of (1 - SSIM) in loss and map
    sigma: float = 4.0  # Gaussian smoothing of the map, in input pixels
    seed: int = 0


def _gauss_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM (B, H, W) of two (B, C, H, W) images, averaged over channels (same padding)."""
    c = a.shape[1]
    win = _gauss_window().to(a).expand(c, 1, 11, 11)
    pad = 5

    def filt(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), win, groups=c)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a ** 2
    var_b = filt(b * b) - mu_b ** 2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean(1)


class ConvAutoencoder(nn.Module):
    def __init__(self, width: int, latent: int) -> None:
        super().__init__()
        w = width
        chans = [3, w, 2 * w, 4 * w, 4 * w]

        def down(i: int, o: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(i, o, 4, 2, 1), nn.BatchNorm2d(o), nn.LeakyReLU(0.2))

        def up(i: int, o: int) -> nn.Module:
            return nn.Sequential(nn.ConvTranspose2d(i, o, 4, 2, 1), nn.BatchNorm2d(o), nn.LeakyReLU(0.2))

        self.encoder = nn.Sequential(*[down(chans[i], chans[i + 1]) for i in range(4)],
                                     nn.Conv2d(chans[4], latent, 1))
        self.decoder = nn.Sequential(nn.Conv2d(latent, chans[4], 1), nn.LeakyReLU(0.2),
                                     *[up(chans[4 - i], chans[3 - i]) for i in range(3)],
                                     nn.ConvTranspose2d(chans[1], 3, 4, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 16, (-w) % 16
        y = self.decoder(self.encoder(F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x))
        return y[..., :h, :w]


@ANOMALY_MODELS.register("autoencoder")
class Autoencoder(AnomalyModel):
    Config = AutoencoderConfig
    name = "autoencoder"

    def __init__(self, config: AutoencoderConfig | None = None, *, pretrained: bool = True) -> None:
        super().__init__(config, pretrained=pretrained)
        c: AutoencoderConfig = self.config
        if c.epochs < 1 or c.width < 1 or c.latent < 1:
            raise ConfigError("autoencoder: epochs, width and latent must be >= 1")
        self.net = ConvAutoencoder(c.width, c.latent)
        self.register_buffer("final_loss_", torch.zeros(()))

    def _error_maps(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        l2 = ((x - recon) ** 2).mean(1)
        return l2 + self.config.ssim_weight * (1 - ssim_map(x, recon, data_range=4.0))

    def fit(self, loader: Iterable[Any]) -> Autoencoder:
        c: AutoencoderConfig = self.config
        torch.manual_seed(c.seed)
        opt = torch.optim.Adam(self.net.parameters(), lr=c.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.epochs)
        self.net.train()
        last = 0.0
        for epoch in range(c.epochs):
            total, n = 0.0, 0
            for images in image_batches(loader, desc=f"autoencoder: epoch {epoch + 1}/{c.epochs}"):
                x = images.to(self.device).clone()
                recon = self.net(x)
                loss = self._error_maps(x, recon).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, n = total + float(loss.detach()) * x.shape[0], n + x.shape[0]
            sched.step()
            last = total / max(1, n)
        if last == 0.0 and n == 0:
            raise ConfigError("autoencoder: no training images")
        self.net.eval()
        self.final_loss_.fill_(last)
        self._mark_fitted()
        return self

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> AnomalyOutput:
        self._check_fitted()
        self.net.eval()
        x = images.to(self.device)
        maps = gaussian_blur(self._error_maps(x, self.net(x)), self.config.sigma)
        return AnomalyOutput(maps.flatten(1).max(1).values.cpu(), maps.cpu())

    def summary(self) -> dict[str, Any]:
        return {"final_train_loss": float(self.final_loss_),
                "parameters": sum(p.numel() for p in self.net.parameters())}
