"""Where models run: one device name (``auto | cpu | cuda | cuda:N | mps``) for every verb.

``resolve_device("auto")`` picks CUDA when present, else Apple's MPS when present, else the CPU; a name
that torch does not know, or a device this machine does not have, is one ``ConfigError`` line. CPU runs
stay exactly what they were: nothing here changes numerics unless half precision is asked for.

``inference_autocast(device, half=True)`` is the optional half precision for inference: float16 autocast
on CUDA and MPS, bfloat16 on the CPU (the dtype CPU autocast supports); ``half=False`` is a no-op
context, so callers wrap their forward pass unconditionally.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from defectlab.errors import ConfigError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | torch.device | None = "auto", *, what: str = "device") -> torch.device:
    """The torch device for ``name``; ``what`` names the option in the error (e.g. ``--device``)."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{what} '{name}' unknown; use {DEVICE_CHOICES}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{what} '{name}': no CUDA device is available here (use auto or cpu)")
        count = torch.cuda.device_count()
        index = 0 if dev.index is None else dev.index
        if index >= count:
            raise ConfigError(f"{what} '{name}': only {count} CUDA device(s) here, cuda:0..{count - 1}")
        return torch.device("cuda", index)
    if dev.type == "mps":
        if not mps_available():
            raise ConfigError(f"{what} '{name}': MPS is not available on this machine (use auto or cpu)")
        return torch.device("mps")
    raise ConfigError(f"{what} '{name}' not supported; use {DEVICE_CHOICES}")


def device_name(device: torch.device) -> str:
    """A human name for reports: the GPU's model for CUDA, else the device type."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def half_dtype(device: torch.device) -> torch.dtype:
    """The reduced precision autocast uses on ``device``."""
    return torch.bfloat16 if device.type == "cpu" else torch.float16


@contextlib.contextmanager
def inference_autocast(device: torch.device, half: bool = False) -> Iterator[None]:
    """Autocast the forward pass to half precision on ``device`` when ``half``; else change nothing."""
    if not half:
        yield
        return
    with torch.autocast(device.type, dtype=half_dtype(device)):
        yield


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (for timing); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


__all__ = ["DEVICE_CHOICES", "device_name", "half_dtype", "inference_autocast", "mps_available",
           "resolve_device", "synchronize"]
