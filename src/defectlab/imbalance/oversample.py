"""Oversampling of minority classes: SMOTE in a feature space, and DeepSMOTE on images.

* ``smote_features(features, labels, target_counts, k)``: imbalanced-learn's SMOTE, class by class
  (so that ``k`` can shrink to ``n_c - 1`` for a class with few samples); a class with a single sample
  is duplicated (SMOTE needs a neighbour). Typical use: frozen-backbone features, then train a head.
* ``DeepSMOTE`` (Dablain, Krawczyk & Chawla, 2022): a small convolutional encoder/decoder trained on the
  images with a reconstruction loss plus the DeepSMOTE permutation loss (a class's images re-ordered,
  encoded with the encoder frozen, decoded, compared with the same re-ordered images); new images are
  decoded from SMOTE samples in the latent space of each minority class.

``target_counts``: ``{class: count}``, a per-class sequence, an int (every class up to it), or ``"max"``
(every class up to the largest). Classes already at or above their target are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from defectlab.errors import ConfigError

log = logging.getLogger(__name__)

TargetCounts = Mapping[int, int] | Sequence[int] | int | str


def resolve_targets(labels: np.ndarray, target_counts: TargetCounts) -> dict[int, int]:
    """``{class: number of samples wanted}`` for the classes present in ``labels``."""
    counts = np.bincount(labels)
    present = [c for c in range(counts.size) if counts[c] > 0]
    if isinstance(target_counts, str):
        if target_counts != "max":
            raise ConfigError(f"target_counts: unknown '{target_counts}'; use 'max', an int or per-class counts")
        return {c: int(counts.max()) for c in present}
    if isinstance(target_counts, (int, np.integer)):
        return {c: int(target_counts) for c in present}
    if isinstance(target_counts, Mapping):
        out = {int(c): int(n) for c, n in target_counts.items()}
    else:
        out = {c: int(n) for c, n in enumerate(target_counts)}
    missing = [c for c in out if c >= counts.size or counts[c] == 0]
    if missing:
        raise ConfigError(f"target_counts: class(es) {missing} have no samples to oversample from")
    return out


def smote_features(features: np.ndarray | torch.Tensor, labels: Sequence[int] | np.ndarray | torch.Tensor,
                   target_counts: TargetCounts = "max", k: int = 5, seed: int = 0
                   ) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
    """Original samples followed by synthetic ones, so that class ``c`` has ``target_counts[c]`` samples.

    Returns the same type as ``features`` (numpy array or tensor) and labels of the matching type.
    """
    from imblearn.over_sampling import SMOTE

    as_torch = isinstance(features, torch.Tensor)
    x = features.detach().cpu().numpy() if as_torch else np.asarray(features)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    y = y.astype(np.int64)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ConfigError(f"smote_features: expected (N, D) features and N labels, got {x.shape} and {y.shape}")
    if k < 1:
        raise ConfigError(f"smote_features: k must be >= 1, got {k}")
    rng = np.random.default_rng(seed)
    new_x, new_y = [x], [y]
    for c, want in sorted(resolve_targets(y, target_counts).items()):
        have = int((y == c).sum())
        extra = want - have
        if extra <= 0:
            continue
        if have == 1:
            log.warning("smote_features: class %d has one sample; duplicating it %d times", c, extra)
            new_x.append(np.repeat(x[y == c], extra, axis=0))
        else:
            # binary problem (class c vs one other sample) so SMOTE only synthesises class c
            others = np.flatnonzero(y != c)[:1]
            xs = np.concatenate([x[y == c], x[others]]) if others.size else x[y == c]
            ys = np.concatenate([np.ones(have, np.int64), np.zeros(others.size, np.int64)])
            if not others.size:  # a single class: give SMOTE a dummy second class far away
                xs = np.concatenate([xs, xs[:1] + 1e6])
                ys = np.concatenate([ys, [0]])
            sm = SMOTE(sampling_strategy={1: want}, k_neighbors=min(k, have - 1),
                       random_state=int(rng.integers(2**31 - 1)))
            xr, _ = sm.fit_resample(xs, ys)
            new_x.append(xr[len(xs):].astype(x.dtype, copy=False))
        new_y.append(np.full(extra, c, dtype=np.int64))
    out_x, out_y = np.concatenate(new_x), np.concatenate(new_y)
    if as_torch:
        return torch.from_numpy(out_x).to(features.dtype), torch.from_numpy(out_y)
    return out_x, out_y


class _Encoder(nn.Module):
    def __init__(self, channels: int, width: int, latent_dim: int, size: tuple[int, int]) -> None:
        super().__init__()
        layers, c = [], channels
        for i in range(3):
            out = width * 2 ** i
            layers += [nn.Conv2d(c, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2, inplace=True)]
            c = out
        self.conv = nn.Sequential(*layers)
        self.grid = (max(1, size[0] // 8), max(1, size[1] // 8))
        self.fc = nn.Linear(c * self.grid[0] * self.grid[1], latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.adaptive_avg_pool2d(self.conv(x), self.grid)
        return self.fc(h.flatten(1))


class _Decoder(nn.Module):
    def __init__(self, channels: int, width: int, latent_dim: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size
        self.grid = (max(1, size[0] // 8), max(1, size[1] // 8))
        self.c0 = width * 4
        self.fc = nn.Sequential(nn.Linear(latent_dim, self.c0 * self.grid[0] * self.grid[1]), nn.ReLU(inplace=True))
        layers, c = [], self.c0
        for i in range(2):
            out = c // 2
            layers += [nn.ConvTranspose2d(c, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
        layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1)]
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.c0, *self.grid)
        x = self.deconv(h)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x


class DeepSMOTE:
    """DeepSMOTE on ``(N, C, H, W)`` float images (any normalisation; outputs are clamped to the data range).

    ``fit(images, labels)`` trains the encoder/decoder; ``sample(target_counts)`` returns only the new
    images and labels; ``fit_resample`` returns originals followed by the new ones.
    """

    def __init__(self, *, latent_dim: int = 64, width: int = 32, epochs: int = 30, batch_size: int = 32,
                 lr: float = 2e-3, perm_samples: int = 32, k: int = 5, seed: int = 0, device: str = "cpu",
                 progress: bool = False) -> None:
        self.latent_dim, self.width, self.epochs, self.batch_size = latent_dim, width, epochs, batch_size
        self.lr, self.perm_samples, self.k, self.seed, self.device = lr, perm_samples, k, seed, device
        self.progress = progress

    def fit(self, images: torch.Tensor, labels: Sequence[int] | torch.Tensor) -> DeepSMOTE:
        x = torch.as_tensor(images, dtype=torch.float32)
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if x.ndim != 4 or x.shape[0] != y.shape[0]:
            raise ConfigError("DeepSMOTE: expected (N, C, H, W) images and N labels, "
                              f"got {tuple(x.shape)}, {tuple(y.shape)}")
        g = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        size = (int(x.shape[2]), int(x.shape[3]))
        self.encoder_ = _Encoder(x.shape[1], self.width, self.latent_dim, size).to(self.device)
        self.decoder_ = _Decoder(x.shape[1], self.width, self.latent_dim, size).to(self.device)
        self.lo_, self.hi_ = x.amin(dim=(0, 2, 3)).view(1, -1, 1, 1), x.amax(dim=(0, 2, 3)).view(1, -1, 1, 1)
        params = list(self.encoder_.parameters()) + list(self.decoder_.parameters())
        opt = torch.optim.Adam(params, lr=self.lr)
        classes = torch.unique(y)
        self.history_: list[float] = []
        for _ in tqdm(range(self.epochs), desc="DeepSMOTE", disable=not self.progress):
            self.encoder_.train()
            self.decoder_.train()
            perm = torch.randperm(len(x), generator=g)
            total = 0.0
            for start in range(0, len(x), self.batch_size):
                idx = perm[start:start + self.batch_size]
                if len(idx) < 2:
                    continue
                xb = x[idx].to(self.device)
                rec = F.mse_loss(self.decoder_(self.encoder_(xb)), xb)
                loss = rec + self._permutation_loss(x, y, classes, g)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            self.history_.append(total / len(x))
        self.x_, self.y_ = x, y
        return self

    def _permutation_loss(self, x: torch.Tensor, y: torch.Tensor, classes: torch.Tensor,
                          g: torch.Generator) -> torch.Tensor:
        """One random class, up to ``perm_samples`` images, shifted by one; encoder not trained by it."""
        c = classes[torch.randint(len(classes), (1,), generator=g)].item()
        members = (y == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)[:self.perm_samples]]
        if len(members) < 2:
            return x.new_zeros(()).to(self.device)
        xc = x[members].to(self.device)
        shift = torch.roll(torch.arange(len(members)), -1)
        with torch.no_grad():
            z = self.encoder_(xc)
        return F.mse_loss(self.decoder_(z[shift]), xc[shift])

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.encoder_.eval()
        return torch.cat([self.encoder_(b.to(self.device)).cpu() for b in images.split(self.batch_size)])

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self.decoder_.eval()
        out = torch.cat([self.decoder_(b.to(self.device)).cpu() for b in z.split(self.batch_size)])
        return torch.maximum(torch.minimum(out, self.hi_), self.lo_)

    def sample(self, target_counts: TargetCounts = "max") -> tuple[torch.Tensor, torch.Tensor]:
        if not hasattr(self, "encoder_"):
            raise RuntimeError("DeepSMOTE: call fit first")
        z = self.encode(self.x_)
        z_all, y_all = smote_features(z, self.y_, target_counts, k=self.k, seed=self.seed)
        z_new, y_new = z_all[len(z):], y_all[len(z):]
        if len(z_new) == 0:
            return self.x_.new_zeros((0, *self.x_.shape[1:])), y_new
        return self.decode(z_new), y_new

    def fit_resample(self, images: torch.Tensor, labels: Sequence[int] | torch.Tensor,
                     target_counts: TargetCounts = "max") -> tuple[torch.Tensor, torch.Tensor]:
        self.fit(images, labels)
        new_x, new_y = self.sample(target_counts)
        return torch.cat([self.x_, new_x]), torch.cat([self.y_, new_y])


def deepsmote(images: torch.Tensor, labels: Sequence[int] | torch.Tensor, target_counts: TargetCounts = "max",
              **params: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``DeepSMOTE(**params).fit_resample(images, labels, target_counts)``."""
    return DeepSMOTE(**params).fit_resample(images, labels, target_counts)  # type: ignore[arg-type]
