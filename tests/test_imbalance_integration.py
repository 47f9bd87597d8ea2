"""Long-tail methods inside the classification runner: the example file, and every method through the
trainer on a tiny synthetic long-tailed set (a checkpoint of a wrapped model reloads and predicts)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from defectlab.classify import ModelConfig
from defectlab.classify.data import cache_images
from defectlab.classify.experiment import load_experiment, resolve_attempts
from defectlab.classify.train import TrainConfig, Trainer, build_setup, predict_logits
from defectlab.data.index import open_dataset
from defectlab.data.synthetic import SynthConfig, make_synthetic
from defectlab.errors import ConfigError
from defectlab.imbalance import check_options

pytestmark = pytest.mark.usefixtures("one_torch_thread")


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "longtail_neu.yaml"
SIZE = 32


def test_longtail_example_parses_and_validates() -> None:
    cfg = load_experiment(EXAMPLE)
    assert cfg.data.split["long_tail"] == 100
    attempts = resolve_attempts(cfg)
    names = [a.name for a in attempts]
    assert names[0] == "ce" and {"bcl", "group_softmax", "logit_adjusted", "posthoc_la"} <= set(names)
    for a in attempts:  # every method/loss/sampler name and parameter name is known
        t = a.train
        check_options(t.method, t.method_params, loss=t.loss, loss_params=t.loss_params, sampler=t.sampler,
                      sampler_params=t.sampler_params)
    methods = {a.train.method for a in attempts}
    samplers = {a.train.sampler for a in attempts}
    assert methods == {"plain", "bcl", "group_softmax"} and samplers == {"instance", "class_balanced", "sqrt"}


def test_check_options_rejects_typos() -> None:
    with pytest.raises(ConfigError, match="gama"):
        check_options("plain", loss="focal", loss_params={"gama": 2.0})
    with pytest.raises(ConfigError, match="power"):
        check_options("plain", sampler="sqrt", sampler_params={"power": 1})
    with pytest.raises(ConfigError, match="did you mean"):
        check_options("bcll")


@pytest.fixture(scope="module")
def tiny_lt(tmp_path_factory: pytest.TempPathFactory):
    root = make_synthetic(tmp_path_factory.mktemp("lt"), SynthConfig(
        kind="object", size=SIZE, n_train=2, n_test_good=8, n_per_defect=4, defects=("hole", "scratch")))
    recs = [r for r in open_dataset(root).records if r.split == "test"]
    # long tail: good 8, hole 4, scratch 2
    recs = [r for r in recs if r.defect_type != "scratch"] + [r for r in recs if r.defect_type == "scratch"][:2]
    classes = ["good", "hole", "scratch"]
    return classes, cache_images(recs, {c: i for i, c in enumerate(classes)}, size=SIZE)


@pytest.mark.parametrize("train", [
    {"method": "bcl"},
    {"method": "group_softmax", "method_params": {"groups": [[0], [1, 2]]}},
    {"loss": "logit_adjusted", "sampler": "class_balanced", "method_params": {"posthoc_tau": 0.5}},
])
def test_methods_run_through_the_trainer(train: dict, tiny_lt, tmp_path: Path) -> None:
    classes, data = tiny_lt
    model_cfg = ModelConfig(name="simple_cnn", options={"width": 8, "blocks": 2})
    cfg = TrainConfig(epochs=2, batch_size=4, image_size=SIZE, augment="basic", **train)
    trainer = Trainer(model_cfg, cfg, classes, tmp_path, progress=False).fit(data, data)
    assert len(trainer.history_) == 2 and all(math.isfinite(r["train_loss"]) for r in trainer.history_)
    assert trainer.class_counts_ == [8, 4, 2]
    logits = predict_logits(trainer.setup_, data.images, batch_size=8, device=torch.device("cpu"))
    assert logits.shape == (len(data), 3) and torch.isfinite(logits).all()
    # the checkpoint of the wrapped model loads into a freshly wrapped one and predicts the same
    fresh = build_setup(model_cfg, cfg, classes, trainer.class_counts_)
    fresh.model.load_state_dict(torch.load(tmp_path / "best.pt", weights_only=False)["model"])
    again = predict_logits(fresh, data.images, batch_size=8, device=torch.device("cpu"))
    assert torch.allclose(again, logits, atol=1e-5)
