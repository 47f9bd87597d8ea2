"""Data-parallel training: the one-process environment changes nothing; ``torchrun`` with 2 CPU processes
(gloo) trains a U-Net, process 0 alone writes one checkpoint and reports, and the result is about that of
one process (same global batch and steps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from defectlab import distributed
from defectlab.cli import main
from defectlab.data.synthetic import SynthConfig, make_synthetic
from defectlab.errors import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src"
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_one_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    env = distributed.setup("cpu")
    assert (env.rank, env.world_size, env.distributed, env.is_rank0) == (0, 1, False, True)
    assert distributed.is_rank0()
    assert distributed.all_reduce_sum([1.5, 3.0], env) == [1.5, 3.0]
    model = torch.nn.Linear(2, 1)
    assert distributed.wrap(model, env) is model
    monkeypatch.setenv("RANK", "1")
    assert not distributed.is_rank0()  # after teardown a worker still knows it is not process 0
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two' is not an integer"):
        distributed.setup("cpu")


@pytest.mark.slow
def test_two_cpu_processes_train_like_one(tmp_path: Path) -> None:
    data = make_synthetic(tmp_path / "data", SynthConfig(kind="texture", size=64, n_train=6, n_test_good=4,
                                                         n_per_defect=6, defects=("hole", "contamination"),
                                                         seed=0))
    args = [str(data), "--size", "32", "--epochs", "10", "--batch-size", "4", "--lr", "0.01",
            "--max-good-train", "3", "--device", "cpu"]
    assert main(["segment", "fit", *args[:1], "--out", str(tmp_path / "one"), *args[1:]]) == 0
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update(PYTHONPATH=f"{SRC}{os.pathsep}{env.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "defectlab", "segment", "fit", *args[:1], "--out", str(tmp_path / "two"), *args[1:]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("trained small U-Net") == 1  # process 0 alone reports
    two = tmp_path / "two"
    assert sorted(p.name for p in two.iterdir()) == ["config.yaml", "history.json", "model.pt", "split.json"]
    hist = {k: json.loads((tmp_path / k / "history.json").read_text()) for k in ("one", "two")}
    assert len(hist["two"]) == 10 and hist["two"][-1]["loss"] < 0.8 * hist["two"][0]["loss"]
    metrics = {}
    for k in ("one", "two"):
        assert main(["segment", "test", str(tmp_path / k), "--overlays", "0", "--device", "cpu"]) == 0
        metrics[k] = json.loads((tmp_path / k / "metrics.json").read_text())
    # measured: final loss 0.56 (one) vs 0.46 (two), pixel AUROC 0.9995 vs 0.9997, IoU 0.60 vs 0.81
    assert abs(hist["two"][-1]["loss"] - hist["one"][-1]["loss"]) < 0.25
    assert metrics["two"]["pixel_auroc"] >= 0.95 and metrics["one"]["pixel_auroc"] >= 0.95
    assert abs(metrics["two"]["pixel_auroc"] - metrics["one"]["pixel_auroc"]) < 0.05


@pytest.mark.slow
def test_classify_two_cpu_processes(tmp_path: Path) -> None:
    """``classify run`` under torchrun: both processes train (DDP, gloo), process 0 alone writes the
    attempt's checkpoints and the comparison, and both agree on the history (one all-reduced record)."""
    import yaml

    data = make_synthetic(tmp_path / "data", SynthConfig(kind="object", size=32, n_train=2, n_test_good=12,
                                                         n_per_defect=12, defects=("hole", "scratch"), seed=0))
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({
        "name": "ddp", "data": {"dataset": str(data), "split": {"val": 0.25, "test": 0.25, "use_train_good": False}},
        "base": {"model": {"name": "simple_cnn", "options": {"width": 8, "blocks": 2}},
                 "train": {"epochs": 3, "image_size": 32, "batch_size": 4, "lr": 0.003}},
        "attempts": [{"name": "a"}]}))
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update(PYTHONPATH=f"{SRC}{os.pathsep}{env.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "defectlab", "classify", "run", str(exp), "--out", str(tmp_path / "run"), "--no-progress",
           "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("wrote ") == 1  # process 0 alone reports
    adir = tmp_path / "run" / "a"
    assert sorted(p.name for p in adir.iterdir()) == ["best.pt", "config.yaml", "confusion.png", "epochs.csv",
                                                      "last.pt", "per_class.csv", "result.json"]
    result = json.loads((adir / "result.json").read_text())
    assert result["epochs_run"] == 3 and len(result["history"]) == 3
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]
    ckpt = torch.load(adir / "last.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"])  # the bare model is saved, not DDP's wrapper
    assert ckpt["state"]["epoch"] == 3
