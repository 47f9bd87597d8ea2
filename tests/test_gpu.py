"""CUDA paths (marked ``gpu``; skipped without a CUDA device; ``bench/gpu_check.sh`` runs them on a GPU):
PatchCore, the U-Net and the nearest-neighbour search on the GPU agree with the CPU; DDP over NCCL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from defectlab.anomaly import build_model
from defectlab.anomaly.search import faiss_gpus, nearest
from defectlab.data.index import open_dataset
from defectlab.data.synthetic import SynthConfig, make_synthetic
from defectlab.devices import inference_autocast
from defectlab.segment import SegConfig, Segmenter

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda", 0)


def test_search_on_gpu_matches_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.rand(5000, 152, generator=g), torch.rand(700, 152, generator=g)
    d_cpu, _ = nearest(queries, bank)
    d_gpu, i_gpu = nearest(queries.to(CUDA), bank.to(CUDA))
    assert d_gpu.device.type == "cuda" and i_gpu.device.type == "cuda"
    assert torch.allclose(d_gpu.cpu(), d_cpu, atol=1e-4)
    if faiss_gpus():
        d_f, _ = nearest(queries.to(CUDA), bank.to(CUDA), backend="faiss")
        assert torch.allclose(d_f.cpu(), d_cpu, atol=1e-4)


def test_patchcore_on_gpu_matches_cpu_and_half_is_close() -> None:
    g = torch.Generator().manual_seed(0)
    train, test = torch.rand(8, 3, 96, 96, generator=g), torch.rand(4, 3, 96, 96, generator=g)
    cpu = build_model("patchcore", {"coreset_ratio": 0.5, "weights": "none"})
    gpu = build_model("patchcore", {"coreset_ratio": 0.5, "weights": "none"})
    gpu.load_state_dict(cpu.state_dict())  # the same random backbone
    cpu.fit([train[:4], train[4:]])
    gpu.to(CUDA).fit([train[:4], train[4:]])
    assert gpu.memory_bank_.device.type == "cuda"
    a, b = cpu.predict(test), gpu.predict(test)
    assert torch.allclose(a.scores, b.scores, rtol=1e-3, atol=1e-3)
    assert torch.allclose(a.maps, b.maps, rtol=1e-3, atol=1e-3)
    with inference_autocast(CUDA, half=True):
        h = gpu.predict(test)
    assert torch.allclose(h.scores.float(), b.scores, rtol=0.05, atol=0.05)


def test_unet_fits_on_gpu_and_reloads_there(tmp_path: Path) -> None:
    data = make_synthetic(tmp_path, SynthConfig(kind="texture", size=64, n_train=6, n_test_good=4,
                                                n_per_defect=6, defects=("hole", "contamination"), seed=0))
    recs = [r for r in open_dataset(data).records if r.defect_type != "good" or r.split == "train"]
    seg = Segmenter(SegConfig(size=64, base=8, epochs=6, batch_size=8, lr=1e-2, augment="none")).fit(recs,
                                                                                                  device="cuda")
    assert seg.device.type == "cuda" and seg.history_[-1]["loss"] < seg.history_[0]["loss"]
    seg.save(tmp_path / "m.pt")
    from defectlab.data.dataset import load_pair

    images = [load_pair(r)[0] for r in recs[:4]]
    on_gpu = Segmenter.load(tmp_path / "m.pt", device="cuda").predict_proba(images)
    on_cpu = Segmenter.load(tmp_path / "m.pt", device="cpu").predict_proba(images)
    assert all(abs(a - b).max() < 1e-3 for a, b in zip(on_gpu, on_cpu, strict=True))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over NCCL needs 2 GPUs")
def test_ddp_two_gpus(tmp_path: Path) -> None:
    data = make_synthetic(tmp_path / "data", SynthConfig(kind="texture", size=64, n_train=6, n_test_good=4,
                                                         n_per_defect=6, defects=("hole",), seed=0))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "defectlab", "segment", "fit", str(data), "--out", str(tmp_path / "run"), "--size", "32",
           "--epochs", "3", "--device", "cuda"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 3


@pytest.mark.parametrize("method", ["patchcore", "padim", "knn", "deep_svdd", "ocsvm", "autoencoder"])
def test_every_anomaly_method_fits_and_predicts_on_gpu(method: str) -> None:
    g = torch.Generator().manual_seed(0)
    train, test = torch.rand(8, 3, 64, 64, generator=g), torch.rand(4, 3, 64, 64, generator=g)
    opts = {"epochs": 2} if method == "autoencoder" else {"weights": "none"}
    cpu, gpu = build_model(method, opts), build_model(method, opts)
    gpu.load_state_dict(cpu.state_dict())  # the same random networks
    cpu.fit([train[:4], train[4:]])
    gpu.to(CUDA).fit([train[:4], train[4:]])
    a, b = cpu.predict(test), gpu.predict(test)
    assert b.scores.device.type == "cpu" and b.maps.shape == a.maps.shape
    assert torch.isfinite(b.scores).all() and torch.isfinite(b.maps).all()
    if method in ("patchcore", "padim", "knn", "ocsvm"):  # no training loop: the same numbers up to float error
        assert torch.allclose(a.scores, b.scores, rtol=1e-2, atol=1e-3)


def test_cli_anomaly_and_classify_on_gpu(tmp_path: Path) -> None:
    from defectlab.cli import main

    data = make_synthetic(tmp_path / "data", SynthConfig(kind="object", size=64, n_train=12, n_test_good=12,
                                                         n_per_defect=12, defects=("hole", "scratch"), seed=0))
    run = tmp_path / "run"
    assert main(["anomaly", "fit", str(data), "--out", str(run), "--image-size", "64", "--device", "cuda"]) == 0
    cuda = json.loads((run / "metrics.json").read_text())
    assert main(["anomaly", "test", str(run), "--device", "cuda", "--half", "--overlays", "0"]) == 0
    half = json.loads((run / "metrics.json").read_text())
    assert half["timing"]["half"] and half["timing"]["device"].startswith("cuda")
    assert abs(half["metrics"]["all"]["image_auroc"] - cuda["metrics"]["all"]["image_auroc"]) < 0.05
    exp = tmp_path / "exp.yaml"
    exp.write_text(json.dumps({
        "name": "gpu", "data": {"dataset": str(data), "split": {"val": 0.25, "test": 0.25, "use_train_good": False}},
        "base": {"model": {"name": "simple_cnn", "options": {"width": 8, "blocks": 2}},
                 "train": {"epochs": 2, "image_size": 32, "batch_size": 4}},
        "attempts": [{"name": "a"}]}))
    assert main(["classify", "run", str(exp), "--out", str(tmp_path / "c"), "--device", "cuda",
                 "--no-progress"]) == 0
    assert (tmp_path / "c" / "a" / "best.pt").is_file()
