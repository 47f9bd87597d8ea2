"""Shared fixtures: small synthetic MVTec-format datasets written once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from defectlab.data.synthetic import SynthConfig, make_synthetic

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="session")
def synthetic_object(synth_root: Path) -> Path:
    """RGB objects, 128 px: 24 train good, 8 test good, 6 per defect type (4 types)."""
    return make_synthetic(synth_root, SynthConfig(kind="object", seed=0))


@pytest.fixture(scope="session")
def synthetic_texture_gray(synth_root: Path) -> Path:
    """Grayscale textures, 128 px, same counts as ``synthetic_object``."""
    return make_synthetic(synth_root, SynthConfig(kind="texture", grayscale=True, seed=1))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread (two threads spin against each other on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shared_dataset(name: str) -> Path:
    """A real dataset from ../shared/data, or skip the test cleanly when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"shared dataset {path} not present")
    return path
