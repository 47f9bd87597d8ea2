"""Device selection (CPU here; the CUDA cases run where a GPU is, marked ``gpu``) and half precision."""

from __future__ import annotations

import pytest
import torch

from defectlab.devices import half_dtype, inference_autocast, resolve_device
from defectlab.errors import ConfigError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_auto_and_cpu():
    dev = resolve_device("auto")
    if torch.cuda.is_available():
        assert dev.type == "cuda"
    elif torch.backends.mps.is_available():
        assert dev.type == "mps"
    else:
        assert dev == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(None) == dev
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "tpu0", ""])
def test_unknown_device_is_one_line(name):
    if name == "":  # empty means auto
        assert resolve_device(name) == resolve_device("auto")
        return
    with pytest.raises(ConfigError) as err:
        resolve_device(name, what="--device")
    msg = str(err.value)
    assert "\n" not in msg and "--device" in msg and name in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_absent_cuda_is_one_line():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="no CUDA device is available"):
            resolve_device(name)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_absent_mps_is_one_line():
    with pytest.raises(ConfigError, match="MPS is not available"):
        resolve_device("mps")


def test_half_autocast_on_cpu():
    cpu = torch.device("cpu")
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with inference_autocast(cpu, half=False):
        assert (a @ b).dtype == torch.float32
    with inference_autocast(cpu, half=True):
        out = a @ b
    assert out.dtype == half_dtype(cpu) == torch.bfloat16
    assert torch.allclose(out.float(), a @ b, atol=0.2)


@pytest.mark.gpu
@needs_cuda
def test_cuda_index_and_half():
    n = torch.cuda.device_count()
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device(f"cuda:{n - 1}") == torch.device("cuda", n - 1)
    with pytest.raises(ConfigError, match="CUDA device"):
        resolve_device(f"cuda:{n}")
    dev = torch.device("cuda", 0)
    a, b = torch.randn(8, 16, device=dev), torch.randn(16, 4, device=dev)
    with inference_autocast(dev, half=True):
        assert (a @ b).dtype == torch.float16
