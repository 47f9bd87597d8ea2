"""``anomaly fit --executor ray``: PatchCore's feature extraction on a local 2-CPU Ray actor pool streams
into the same coreset selection and gives the local executor's memory bank and thresholds exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from defectlab.anomaly.detector import Detector
from defectlab.anomaly.runner import RunConfig, fit_detector
from defectlab.cli import main
from defectlab.errors import ConfigError
from tests.test_ray_executor import local_ray  # noqa: F401 - the module's one local Ray (2 CPUs)

pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # starting Ray and two actors takes ~20-60 s on a busy 2-core machine


def test_ray_features_give_the_local_bank(synthetic_object: Path, tmp_path: Path, local_ray,  # noqa: F811
                                          one_torch_thread) -> None:
    run = tmp_path / "run"
    assert main(["anomaly", "fit", str(synthetic_object), "--out", str(run), "--image-size", "64",
                 "--batch-size", "4", "--no-test", "--device", "cpu", "--executor", "ray", "--workers", "2"]) == 0
    remote = Detector.load(run)
    local = fit_detector(RunConfig(data=str(synthetic_object), image_size=64, batch_size=4), device="cpu")
    bank = local.model.memory_bank_
    assert bank.shape[0] > 10 and torch.equal(remote.model.memory_bank_, bank)
    assert remote.thresholds.image == local.thresholds.image
    assert remote.training["n_fit"] == local.training["n_fit"]


def test_ray_executor_is_for_patchcore(synthetic_object: Path) -> None:
    with pytest.raises(ConfigError, match="--executor ray runs PatchCore"):
        fit_detector(RunConfig(data=str(synthetic_object), model="knn", image_size=64), executor="ray")
    with pytest.raises(ConfigError, match="unknown executor"):
        fit_detector(RunConfig(data=str(synthetic_object)), executor="spark")
