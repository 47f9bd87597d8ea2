"""The anomaly-detection interface every method implements, and the types it returns.

Convention, stated once: **a higher score means more anomalous**, for image scores and pixel maps alike.

* ``AnomalyModel`` is the pure-torch core of a method (sklearn-like): ``fit(loader) -> self``,
  ``predict(images) -> AnomalyOutput``; fitted state lives in buffers so ``state_dict`` saves it.
* ``Prediction`` is what inspection code (``defectlab inspect``, the HTTP service) gets for one image,
  from a loaded detector (model + preprocessing + thresholds), at the image's own resolution.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from defectlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from defectlab.runtime.prediction import Prediction  # noqa: F401  (re-exported: it lives torch-free)


class AnomalyOutput(NamedTuple):
    scores: torch.Tensor  # (B,) image anomaly scores
    maps: torch.Tensor  # (B, H, W) pixel anomaly maps at the model's input resolution


# ---------------------------------------------------------------------------------------------------------
# The model interface


def image_batches(loader: Iterable[Any], *, desc: str | None = None) -> Iterator[torch.Tensor]:
    """Image tensors (B, 3, H, W) from a loader of ``Sample`` batches, (image, ...) tuples or tensors.

    Shows a tqdm progress bar when ``desc`` is given (and the loader has a length).
    """
    it: Iterable[Any] = loader
    if desc is not None:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc=desc, unit="batch", leave=False, disable=None)
    for batch in it:
        if isinstance(batch, torch.Tensor):
            yield batch
        elif hasattr(batch, "image"):
            yield batch.image
        elif isinstance(batch, (tuple, list)):
            yield batch[0]
        else:
            raise TypeError(f"cannot find images in a batch of type {type(batch).__name__}")


class AnomalyModel(nn.Module):
    """Pure-torch core of one anomaly-detection method (sklearn-like).

    * ``__init__(config)`` only stores the config (a dataclass, ``Config``) and builds the networks;
      ``pretrained=False`` skips looking for pretrained weights (a saved state dict is loaded next).
    * ``fit(loader) -> self`` learns from good images only; the fitted state lives in registered buffers
      (their names end in ``_``), so ``state_dict()`` saves all of it and ``load_state_dict`` restores it
      even though the buffers' shapes are only known after ``fit``.
    * ``predict(images) -> AnomalyOutput`` on normalised (B, 3, H, W) tensors; maps at the input size.
      Higher = more anomalous.
    * ``mean``/``std``: the input normalisation the model expects (set from the backbone).
    """

    Config: ClassVar[type]
    name: ClassVar[str] = "?"
    fixed_input: ClassVar[bool] = False  # True: every image must have the fitted input size (no "native")
    default_resize: ClassVar[str] = "letterbox"  # what the runner's resize="auto" means for this method

    def __init__(self, config: Any = None, *, pretrained: bool = True) -> None:
        super().__init__()
        self.config = config if config is not None else self.Config()
        self.mean: tuple[float, ...] = IMAGENET_MEAN
        self.std: tuple[float, ...] = IMAGENET_STD
        self.register_buffer("fitted_", torch.zeros((), dtype=torch.bool))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted_)

    def _mark_fitted(self) -> None:
        self.fitted_.fill_(True)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(loader) first")

    @property
    def device(self) -> torch.device:
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def fit(self, loader: Iterable[Any]) -> AnomalyModel:
        raise NotImplementedError

    def predict(self, images: torch.Tensor) -> AnomalyOutput:
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """Facts about the fitted state worth reporting (bank size, feature dim, ...)."""
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # type: ignore[override]
        """As ``nn.Module.load_state_dict``, resizing fitted buffers to the saved shapes first."""
        for name, buf in list(self.named_buffers()):
            new = state_dict.get(name)
            if isinstance(new, torch.Tensor) and new.shape != buf.shape:
                owner_name, _, attr = name.rpartition(".")
                owner = self.get_submodule(owner_name) if owner_name else self
                owner.register_buffer(attr, torch.empty_like(new, device=buf.device))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
