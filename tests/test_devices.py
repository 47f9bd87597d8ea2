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


def test_cli_device_errors_are_one_line_exit_2(tmp_path, capsys):
    """``--device`` on anomaly fit/test/predict and classify run/predict: an unknown or absent device is one
    line (exit code 2) before any work; the classify override names the option."""
    from defectlab.cli import main

    assert main(["anomaly", "fit", str(tmp_path), "--out", str(tmp_path / "run"), "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--device 'tpu' unknown" in err
    exp = tmp_path / "exp.yaml"
    exp.write_text("data: {dataset: nowhere}\nattempts: [a]\n")
    absent = "mps" if torch.cuda.is_available() else "cuda"
    if absent == "mps" and torch.backends.mps.is_available():
        return
    assert main(["classify", "run", str(exp), "--out", str(tmp_path / "c"), "--device", absent]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"--device '{absent}'" in err


def test_patchcore_cpu_fit_is_the_same_on_every_path():
    """The explicit CPU check: ``device="cpu"`` and ``auto`` (the CPU here) fit the model bit for bit as the
    bare model does, and the coreset's device argument changes nothing on the CPU (``bench/
    devices_cpu_identity.py`` compares whole fits against the previous release)."""
    from defectlab.anomaly import build_model
    from defectlab.anomaly.coreset import StreamingCoreset

    g = torch.Generator().manual_seed(0)
    rows = [torch.rand(300, 40, generator=g) for _ in range(4)]
    banks = []
    for kwargs in ({}, {"device": "cpu"}, {"device": resolve_device("cpu")}):
        cs = StreamingCoreset(0.05, 40, proj_dim=16, chunk_size=256, final_rows=512, **kwargs)
        for r in rows:
            cs.add(r)
        banks.append(cs.finish())
    assert all(torch.equal(banks[0], b) for b in banks[1:])
    images = torch.rand(4, 3, 64, 64, generator=g)
    fits, init = [], None
    for dev in (None, "cpu", "auto"):
        model = build_model("patchcore", {"weights": "none", "coreset_ratio": 0.1})
        if init is None:
            init = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(init)  # the same random backbone
        if dev is not None:
            model.to(resolve_device(dev))
        model.fit([images[:2], images[2:]])
        fits.append((model.state_dict(), model.predict(images[:2])))
    if resolve_device("auto").type == "cpu":
        for state, out in fits[1:]:
            assert torch.equal(state["memory_bank_"], fits[0][0]["memory_bank_"])
            assert torch.equal(out.scores, fits[0][1].scores) and torch.equal(out.maps, fits[0][1].maps)
