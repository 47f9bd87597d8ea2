"""Intermediate feature maps of any backbone by module name, stopping the forward pass early.

``FeatureExtractor(model, ["features.6", "features.13"])(x) -> {name: (B, C, h, w)}``: forward hooks
record the named modules' outputs and the pass stops once the last of them has run, so the head of the
network (often the costliest part at stride 32) is never computed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from defectlab.errors import ConfigError


class _Stop(Exception):
    pass


class FeatureExtractor(nn.Module):
    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.layers = list(layers)
        modules = dict(model.named_modules())
        unknown = [n for n in self.layers if n not in modules]
        if unknown or not self.layers:
            import difflib

            hint = difflib.get_close_matches(unknown[0], modules, n=3) if unknown else []
            raise ConfigError(f"unknown feature layer(s) {unknown or '[]'}"
                              + (f"; close: {hint}" if hint else "") + f"; e.g. {list(modules)[1:6]}")
        self._out: dict[str, torch.Tensor] = {}
        for name in self.layers:
            modules[name].register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inp: object, out: torch.Tensor) -> None:
            self._out[name] = out
            if len(self._out) == len(self.layers):
                raise _Stop

        return hook

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._out = {}
        try:
            self.model(x)
        except _Stop:
            pass
        out, self._out = self._out, {}
        return {n: out[n] for n in self.layers}
