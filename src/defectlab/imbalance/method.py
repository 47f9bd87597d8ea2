"""The hook through which the classification trainer runs a long-tail method.

A *method* changes the model, the loss and how logits are read out. The trainer uses it like this
(``plain`` reproduces ordinary training with any loss of ``LOSSES``)::

    check_options(cfg.method, cfg.method_params, loss=..., sampler=...)  # names and parameter names
    method = build_method(cfg.method, cfg.method_params, loss=cfg.loss, loss_params=cfg.loss_params)
    model = method.wrap_model(model, num_classes, class_counts)  # before the optimizer is built
    ...
    outputs = model(images)                  # train mode: whatever the method needs
    loss = method.loss(outputs, targets)     # scalar
    logits = method.predict_logits(outputs)  # (B, C), for accuracy / predictions

(``defectlab.classify.train`` does exactly this.) Contract, so that checkpoints, evaluation, prediction
and export need nothing method-specific:

* the wrapped model is one ``nn.Module`` holding every trainable parameter and buffer (the optimizer
  and ``state_dict`` cover it); rebuild it for prediction with the same ``wrap_model`` call (so keep
  ``class_counts`` with the run) and then ``load_state_dict``;
* in **eval mode** the wrapped model returns plain ``(B, C)`` logits for ``(B, 3, H, W)`` images
  (``predict_logits`` is then the identity and ``loss`` still works, e.g. for a validation loss);
* in **train mode** it may return a richer structure (BCL: projections and prototypes);
* a method with ``views == 2`` (BCL) wants two augmented views of every training image as a
  ``(B, 2, 3, H, W)`` batch (labels stay ``(B,)``); the classify trainer stacks two independent batch
  augmentations, a per-sample pipeline can use ``wrap_transform`` (``TwoViews``: image ``(2, 3, H, W)``).
  The wrapped model accepts 4-D and 5-D input (and ``(B, D)`` / ``(B, V, D)`` feature vectors).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from defectlab.errors import ConfigError
from defectlab.imbalance.losses import LOSSES, build_loss, check_counts, log_prior
from defectlab.registry import Registry

METHODS: Registry = Registry("long-tail method")


class Method:
    """Base class: no model change, cross-entropy, logits as they are."""

    name = "base"
    views = 1

    def wrap_model(self, model: nn.Module, num_classes: int, class_counts: Sequence[int]) -> nn.Module:
        return model

    def wrap_transform(self, transform: Any) -> Any:
        return transform

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict_logits(self, outputs: Any) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return outputs
        return outputs.logits

    def describe(self) -> str:
        return self.name


def find_classifier(model: nn.Module, num_classes: int) -> tuple[nn.Module, str, nn.Linear]:
    """The last ``nn.Linear`` with ``out_features == num_classes``: (its parent, attribute name, layer)."""
    found: tuple[nn.Module, str, nn.Linear] | None = None
    for parent in model.modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.Linear) and child.out_features == num_classes:
                found = (parent, attr, child)
    if found is None:
        raise ConfigError(f"cannot find the classifier of {type(model).__name__}: "
                          f"no nn.Linear layer with {num_classes} outputs")
    return found


def split_classifier(model: nn.Module, num_classes: int) -> tuple[nn.Module, int]:
    """Remove the final linear classifier (in place): ``model(x)`` then returns ``(B, D)`` features.

    Returns the encoder (the same module) and ``D``. Dropout before the classifier stays in the encoder.
    """
    parent, attr, linear = find_classifier(model, num_classes)
    setattr(parent, attr, nn.Identity())
    return model, linear.in_features


def merge_views(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(B, V, C, H, W)`` or ``(B, V, D)`` views -> view-major ``(V*B, ...)``; 4-D/2-D input is one view."""
    if x.ndim in (5, 3):
        v = x.shape[1]
        return x.transpose(0, 1).flatten(0, 1), v
    return x, 1


class TwoViews:
    """Wrap a training transform ``(PIL, mask) -> (image, mask)`` to return two independent draws."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, image: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        a, m = self.transform(image, mask)
        b, _ = self.transform(image, mask)
        return torch.stack([a, b]), m


class PosthocAdjusted(nn.Module):
    """Subtracts ``tau * log pi`` from the logits in eval mode only (training sees raw logits)."""

    def __init__(self, model: nn.Module, class_counts: Sequence[int], tau: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("offset", tau * log_prior(class_counts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return logits if self.training else logits - self.offset.to(logits.dtype)


@METHODS.register("plain")
class PlainMethod(Method):
    """Ordinary training with a loss from ``LOSSES``; optional post-hoc logit adjustment (tau > 0)."""

    name = "plain"

    def __init__(self, *, loss: str = "ce", loss_params: dict | None = None, posthoc_tau: float = 0.0) -> None:
        self.loss_name, self.loss_params, self.posthoc_tau = loss, dict(loss_params or {}), float(posthoc_tau)
        check_params(LOSSES.get(loss), self.loss_params, f"loss '{loss}'")
        self.criterion: nn.Module | None = None

    def wrap_model(self, model: nn.Module, num_classes: int, class_counts: Sequence[int]) -> nn.Module:
        _check(num_classes, class_counts)
        self.criterion = build_loss(self.loss_name, class_counts, self.loss_params)
        if self.posthoc_tau:
            return PosthocAdjusted(model, class_counts, self.posthoc_tau)
        return model

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        if self.criterion is None:
            raise RuntimeError("call wrap_model before loss")
        logits = self.predict_logits(outputs)
        return self.criterion.to(logits.device)(logits, targets)

    def describe(self) -> str:
        extra = f", post-hoc tau={self.posthoc_tau:g}" if self.posthoc_tau else ""
        return f"plain ({self.loss_name}{extra})"


def _check(num_classes: int, class_counts: Sequence[int]) -> None:
    check_counts(class_counts)
    if len(class_counts) != num_classes:
        raise ConfigError(f"class_counts has {len(class_counts)} entries for {num_classes} classes")


def check_params(builder: Any, params: dict | None, where: str) -> None:
    """Unknown keyword parameters of a registry builder -> ConfigError (before any training starts)."""
    import inspect

    try:
        inspect.signature(builder).bind_partial(None, **(params or {}))
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_options(method: str = "plain", method_params: dict | None = None, *, loss: str = "ce",
                  loss_params: dict | None = None, sampler: str = "instance",
                  sampler_params: dict | None = None) -> Method:
    """Every name and parameter name of a trainer's long-tail options, checked without data; returns
    the method (values that need the class counts, e.g. a per-class ``alpha``, are checked by ``wrap_model``).
    """
    from defectlab.imbalance.samplers import SAMPLERS

    check_params(SAMPLERS.get(sampler), sampler_params, f"sampler '{sampler}'")
    return build_method(method, method_params, loss=loss, loss_params=loss_params)


def build_method(name: str = "plain", params: dict | None = None, *, loss: str = "ce",
                 loss_params: dict | None = None) -> Method:
    """A method by name. ``loss``/``loss_params`` (the trainer's loss options) apply to ``plain``;
    other methods set their own loss and refuse a different one (a ConfigError, not a silent override).
    """
    cls = METHODS.get(name)
    params = dict(params or {})
    try:
        if name == "plain":
            return cls(loss=loss, loss_params=loss_params, **params)
        if loss not in (None, "ce") or loss_params:
            raise ConfigError(f"method '{name}' uses its own loss: remove loss '{loss}' / loss_params "
                              f"{sorted(loss_params or {})} (label smoothing included) and set it through "
                              f"the method's parameters instead")
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"method '{name}': {exc}") from None
