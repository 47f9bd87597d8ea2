"""Training-set samplers that re-balance how often each class is drawn.

Every entry of ``SAMPLERS`` is a builder ``(labels, *, num_samples=None, seed=None) -> Sampler`` over
dataset indices; ``num_samples`` defaults to ``len(labels)`` (one "epoch" stays the same length).
With ``n_c`` images of class ``c``, the probability that a draw is of class ``c`` is:

* ``instance``: ``n_c / N`` -- a random permutation of the indices (each image once per epoch).
* ``class_balanced``: ``1 / C`` -- with replacement, each image weighted ``1 / n_c``.
* ``sqrt``: ``sqrt(n_c) / sum_k sqrt(n_k)`` -- with replacement, each image weighted ``1 / sqrt(n_c)``.

``class_power_sampler(labels, q)`` is the general form (class probability ``∝ n_c^q``, Kang et al. 2020).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler, WeightedRandomSampler

from defectlab.errors import ConfigError
from defectlab.registry import Registry

SAMPLERS: Registry = Registry("sampler")


def _labels(labels: Sequence[int]) -> np.ndarray:
    arr = np.asarray(list(labels), dtype=np.int64)
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigError("sampler: labels must be a non-empty sequence of class indices")
    if arr.min() < 0:
        raise ConfigError("sampler: labels must be non-negative class indices")
    return arr


def _generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def _num(num_samples: int | None, n: int) -> int:
    if num_samples is None:
        return n
    if int(num_samples) < 1:
        raise ConfigError(f"sampler: num_samples must be >= 1, got {num_samples}")
    return int(num_samples)


class PermutationSampler(Sampler[int]):
    """Each index once per pass, in a fresh random order (several passes when num_samples > N)."""

    def __init__(self, n: int, num_samples: int, generator: torch.Generator | None) -> None:
        self.n, self.num_samples, self.generator = n, num_samples, generator

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        left = self.num_samples
        while left > 0:
            perm = torch.randperm(self.n, generator=self.generator).tolist()
            yield from perm[:left]
            left -= len(perm[:left])


def class_power_sampler(labels: Sequence[int], q: float, *, num_samples: int | None = None,
                        seed: int | None = None) -> WeightedRandomSampler:
    """With replacement; class ``c`` is drawn with probability ``n_c^q / sum_k n_k^q``."""
    y = _labels(labels)
    counts = np.bincount(y).astype(np.float64)
    per_image = counts[y] ** (q - 1.0)  # n_c^q spread over the n_c images of the class
    return WeightedRandomSampler(torch.as_tensor(per_image, dtype=torch.double), _num(num_samples, y.size),
                                 replacement=True, generator=_generator(seed))


@SAMPLERS.register("instance")
def instance(labels: Sequence[int], *, num_samples: int | None = None, seed: int | None = None) -> Sampler[int]:
    y = _labels(labels)
    return PermutationSampler(y.size, _num(num_samples, y.size), _generator(seed))


@SAMPLERS.register("class_balanced")
def class_balanced(labels: Sequence[int], *, num_samples: int | None = None,
                   seed: int | None = None) -> Sampler[int]:
    return class_power_sampler(labels, 0.0, num_samples=num_samples, seed=seed)


@SAMPLERS.register("sqrt")
def sqrt(labels: Sequence[int], *, num_samples: int | None = None, seed: int | None = None) -> Sampler[int]:
    return class_power_sampler(labels, 0.5, num_samples=num_samples, seed=seed)


def expected_class_probs(name: str, labels: Sequence[int]) -> np.ndarray:
    """The class distribution a registered sampler draws (for checks and reports)."""
    counts = np.bincount(_labels(labels)).astype(np.float64)
    q = {"instance": 1.0, "class_balanced": 0.0, "sqrt": 0.5}.get(name)
    if q is None:
        SAMPLERS.get(name)  # unknown name -> the registry's error
        raise ConfigError(f"sampler '{name}': no closed-form class distribution")
    present = counts > 0
    p = np.zeros_like(counts)
    p[present] = counts[present] ** q
    return p / p.sum()


def build_sampler(name: str, labels: Sequence[int], params: dict | None = None) -> Sampler[int]:
    """``SAMPLERS.get(name)(labels, **params)`` with unknown parameters reported as a ConfigError."""
    builder = SAMPLERS.get(name)
    try:
        return builder(labels, **(params or {}))
    except TypeError as exc:
        raise ConfigError(f"sampler '{name}': {exc}") from None
