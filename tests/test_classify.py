"""Defect-type classification: models, trainer, experiment series, resume, determinism, bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from defectlab.classify import CLASSIFIERS, ModelConfig, build_classifier
from defectlab.classify.data import cache_images
from defectlab.classify.experiment import load_experiment, run_experiment
from defectlab.classify.report import convergence_epoch
from defectlab.classify.train import OPTIMIZERS, TrainConfig, Trainer, build_setup, lr_at
from defectlab.cli import main
from defectlab.data.index import open_dataset
from defectlab.data.synthetic import SynthConfig, make_synthetic
from defectlab.errors import BadInputError, ConfigError

SIZE = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 px synthetic objects: good, hole, scratch with 6 images each (test split of the MVTec layout)."""
    return make_synthetic(tmp_path_factory.mktemp("cls"), SynthConfig(
        kind="object", size=SIZE, n_train=2, n_test_good=6, n_per_defect=6, defects=("hole", "scratch")))


def _experiment(tmp_path: Path, data: Path, attempts: list[dict], *, epochs: int = 2, **split: object) -> Path:
    cfg = {
        "name": "tiny",
        "data": {"dataset": str(data), "split": {"val": 0.34, "test": 0.34, "use_train_good": False, **split}},
        "base": {"model": {"name": "simple_cnn", "options": {"width": 8, "blocks": 2}},
                 "train": {"epochs": epochs, "image_size": SIZE, "batch_size": 4}},
        "attempts": attempts,
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---------------------------------------------------------------------------------------------- models
HEAVY = {"resnet34", "resnet50", "wide_resnet50_2", "vit_b_16"}  # 20-90M parameters: seconds per step on a CPU


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
                                  for n in CLASSIFIERS.names()])
def test_every_model_trains_an_epoch_and_loss_goes_down_on_a_fixed_batch(name: str, tiny: Path, tmp_path: Path) -> None:
    recs = [r for r in open_dataset(tiny).records if r.split == "test"][::5]  # 4 images, all 3 classes
    classes = ["good", "hole", "scratch"]
    data = cache_images(recs, {c: i for i, c in enumerate(classes)}, size=SIZE)
    # a ViT from random init needs a small step (Adam moves every weight by ~lr)
    lr = 1e-5 if name == "vit_b_16" else 1e-3
    cfg = TrainConfig(epochs=1, batch_size=len(recs), image_size=SIZE, lr=lr)
    trainer = Trainer(ModelConfig(name=name), cfg, classes, tmp_path / name, progress=False).fit(data, data)
    assert len(trainer.history_) == 1 and math.isfinite(trainer.history_[0]["train_loss"])
    assert (tmp_path / name / "best.pt").is_file() and (tmp_path / name / "last.pt").is_file()
    # Three optimizer steps on one fixed batch lower its loss. Train mode; the RNG is reset before every
    # forward pass so stochastic layers (EfficientNet's drop-connect) draw the same masks each time.
    setup = build_setup(ModelConfig(name=name), cfg, classes, [1, 1, 1])
    opt = OPTIMIZERS.get("adam")([p for p in setup.model.parameters() if p.requires_grad], cfg)
    x, y = setup.augment(data.images, train=False), data.labels
    setup.model.train()

    def loss() -> torch.Tensor:
        torch.manual_seed(0)
        return setup.method.loss(setup.model(x), y)

    with torch.no_grad():
        before = loss().item()
    for _ in range(3):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = loss().item()
    assert after < before, (before, after)


def test_freeze_stages_and_head_only() -> None:
    model = build_classifier(ModelConfig(name="resnet_scratch", freeze=2, options={"width": 8}), num_classes=3,
                             image_size=SIZE)
    frozen = {n.split(".")[0] for n, p in model.body.named_parameters() if not p.requires_grad}
    assert frozen == {"stem", "layer1"}
    model.train()
    assert not model.body.stem[1].training and model.body.layer2[0].bn1.training  # frozen BN keeps its stats
    head_only = build_classifier(ModelConfig(name="simple_cnn", freeze="all", dropout=0.5), num_classes=3,
                                 image_size=SIZE)
    trainable = [n for n, p in head_only.named_parameters() if p.requires_grad]
    assert trainable == ["head.1.weight", "head.1.bias"]
    assert head_only.head[0].p == 0.5
    with pytest.raises(ConfigError, match="freeze"):
        build_classifier(ModelConfig(name="simple_cnn", freeze=9), num_classes=3, image_size=SIZE)


def test_lr_schedule_warmup_cosine_step() -> None:
    cfg = TrainConfig(lr=1.0, epochs=5, warmup_epochs=1, scheduler="cosine")
    assert [round(lr_at(e, cfg), 4) for e in range(5)] == [0.5, 1.0, 0.8536, 0.5, 0.1464]
    step = TrainConfig(lr=1.0, epochs=6, scheduler="step", step_size=2, gamma=0.5)
    assert [lr_at(e, step) for e in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_convergence_epoch_definition() -> None:
    # min 0.29, gap 0.71: limit 0.29 + 0.05 * 0.71 = 0.3255 -> epoch 3 (0.30) is the first under it
    assert convergence_epoch([1.0, 0.5, 0.30, 0.29, 0.31]) == 3
    assert convergence_epoch([0.4, 0.5, 0.6]) == 1


# ------------------------------------------------------------------------------------------ experiments
def _rows(run: Path) -> list[dict]:
    return json.loads((run / "comparison.json").read_text())


def test_run_writes_one_row_per_attempt_and_predict_prints_class(tiny: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    exp = _experiment(tmp_path, tiny, [
        {"name": "baseline"},
        {"name": "augmented", "based_on": "baseline", "train": {"augment": "strong", "scheduler": "cosine",
                                                                 "optimizer": "sgd", "label_smoothing": 0.1}},
        {"name": "scratch_resnet", "model": {"name": "resnet_scratch", "dropout": 0.2, "options": {"width": 8}},
         "train": {"optimizer": "adamw", "weight_decay": 0.01}},
    ])
    run = tmp_path / "run"
    assert main(["classify", "run", str(exp), "--out", str(run), "--no-progress"]) == 0
    rows = _rows(run)
    assert [r["attempt"] for r in rows] == ["baseline", "augmented", "scratch_resnet"]
    with open(run / "comparison.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 3
    md = (run / "comparison.md").read_text().splitlines()
    assert sum(line.startswith("| ") for line in md) == 1 + 3  # header + one row per attempt
    assert rows[1]["changed"].startswith("baseline + ")
    assert set(rows[0]["per_class_recall"]) == {"good", "hole", "scratch"}
    for r in rows:
        assert 0 <= r["balanced_acc"] <= 1 and r["epochs_run"] == 2 and r["params"] > 0
        adir = run / r["attempt"]
        for f in ("config.yaml", "epochs.csv", "best.pt", "last.pt", "confusion.png", "per_class.csv"):
            assert (adir / f).is_file(), f
    assert (run / "curves.png").stat().st_size > 0
    assert yaml.safe_load((run / "augmented" / "config.yaml").read_text())["train"]["augment"] == "strong"
    capsys.readouterr()
    image = next((tiny / "test" / "hole").iterdir())
    assert main(["classify", "predict", str(run), str(image), "--attempt", "baseline"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    path, label, prob = line.split("\t")
    assert path == str(image) and label in ("good", "hole", "scratch") and 0 < float(prob) <= 1


def test_resume_after_interrupt_matches_uninterrupted_and_same_seed_same_metrics(tiny: Path, tmp_path: Path) -> None:
    exp = load_experiment(_experiment(tmp_path, tiny, [{"name": "a", "train": {"augment": "basic"}}], epochs=3))

    def stop_after_two(epoch: int, row: dict) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, tmp_path / "resumed", progress=False, on_epoch_end=stop_after_two)
    assert not (tmp_path / "resumed" / "a" / "result.json").exists()
    seen: list[int] = []
    resumed = run_experiment(exp, tmp_path / "resumed", progress=False, on_epoch_end=lambda e, r: seen.append(e))
    assert seen == [3]  # continued from the epoch-2 checkpoint
    assert resumed[0]["epochs_run"] == 3
    once = run_experiment(exp, tmp_path / "once", progress=False)
    again = run_experiment(exp, tmp_path / "again", progress=False)
    keys = ("test_acc", "balanced_acc", "macro_f1", "best_val_loss", "best_epoch")
    assert [h["val_loss"] for h in resumed[0]["history"]] == [h["val_loss"] for h in once[0]["history"]]
    assert {k: resumed[0][k] for k in keys} == {k: once[0][k] for k in keys}
    assert {k: again[0][k] for k in keys} == {k: once[0][k] for k in keys}
    # a finished attempt is skipped on re-run
    seen.clear()
    run_experiment(exp, tmp_path / "once", progress=False, on_epoch_end=lambda e, r: seen.append(e))
    assert seen == []


def test_kfold_mode_reports_mean_and_std(tiny: Path, tmp_path: Path) -> None:
    exp = load_experiment(_experiment(tmp_path, tiny, [{"name": "cv"}], epochs=1, folds=3, test=0.0))
    row = run_experiment(exp, tmp_path / "run", progress=False)[0]
    assert row["folds"] == 3 and "test_acc_std" in row
    folds = [json.loads((tmp_path / "run" / "cv" / f"fold{k}" / "result.json").read_text()) for k in range(3)]
    assert row["test_acc"] == pytest.approx(sum(f["test_acc"] for f in folds) / 3)
    assert sum(f["n_test"] for f in folds) == 18  # each image is tested exactly once
    assert "±" in (tmp_path / "run" / "comparison.md").read_text()


def test_early_stopping_with_patience(tiny: Path, tmp_path: Path) -> None:
    exp = load_experiment(_experiment(tmp_path, tiny, [{"name": "es", "train": {
        "patience": 1, "lr": 0.0001, "monitor": "val_acc", "epochs": 20}}]))
    row = run_experiment(exp, tmp_path / "run", progress=False)[0]
    assert row["stopped_early"] and row["epochs_run"] == row["best_epoch"] + 1 < 20


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("attempt, message", [
    ({"name": "x", "model": {"name": "resnet_scrach"}}, "did you mean 'resnet_scratch'"),
    ({"name": "x", "train": {"optimiser": "adam"}}, "unknown option"),
    ({"name": "x", "train": {"optimizer": "adagrad"}}, "unknown optimizer 'adagrad'"),
    ({"name": "x", "train": {"augment": "heavy"}}, "augmentation preset"),
    ({"name": "x", "train": {"scheduler": "cosin"}}, "did you mean 'cosine'"),
    ({"name": "x", "model": {"options": {"depth": 3}}}, "depth"),
    ({"name": "x", "based_on": "nope"}, "based_on"),
])
def test_bad_names_fail_before_training(attempt: dict, message: str, tiny: Path, tmp_path: Path) -> None:
    exp = load_experiment(_experiment(tmp_path, tiny, [{"name": "ok"}, attempt]))
    with pytest.raises(ConfigError, match=message):
        run_experiment(exp, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "ok").exists()  # nothing trained


def _manifest(tmp_path: Path, tiny: Path, *, drop_val_of: str | None = None, missing: bool = False) -> Path:
    rows = []
    for cls in ("good", "hole", "scratch"):
        files = sorted((tiny / "test" / cls).iterdir())
        for i, f in enumerate(files):
            split = ("train", "train", "val", "val", "test", "test")[i]
            if split == "val" and cls == drop_val_of:
                split = "train"
            rows.append([str(f), "", cls, split, ""])
    if missing:
        rows.append([str(tmp_path / "gone.png"), "", "good", "train", ""])
    path = tmp_path / "split.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "mask_path", "defect_type", "split", "fold"], *rows])
    return path


def test_manifest_errors_name_the_problem(tiny: Path, tmp_path: Path) -> None:
    def exp_for(manifest: Path) -> object:
        path = tmp_path / "m.yaml"
        path.write_text(yaml.safe_dump({"data": {"manifest": str(manifest)},
                                        "base": {"train": {"epochs": 1, "image_size": SIZE}},
                                        "attempts": ["only"]}))
        return load_experiment(path)

    with pytest.raises(BadInputError, match="gone.png not found"):
        run_experiment(exp_for(_manifest(tmp_path, tiny, missing=True)), tmp_path / "r1", progress=False)
    with pytest.raises(BadInputError, match="class 'hole' has no images in the val split"):
        run_experiment(exp_for(_manifest(tmp_path, tiny, drop_val_of="hole")), tmp_path / "r2", progress=False)
    assert not (tmp_path / "r2" / "only").exists()
    rows = run_experiment(exp_for(_manifest(tmp_path, tiny)), tmp_path / "r3", progress=False)
    assert rows[0]["n_train"] == 6 and rows[0]["n_test"] == 6


def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"data": {"manifest": str(tmp_path / "none.csv")}, "attempts": ["a"]}))
    assert main(["classify", "run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "manifest not found" in err and len(err.splitlines()) == 1


# -------------------------------------------------------------------------------------------- collapse
def test_collapse_check_flags_one_class_predictions_not_a_skewed_truth() -> None:
    from defectlab.classify.report import collapse_check

    classes = ["good", "hole", "scratch"]
    truth = ["good"] * 4 + ["hole"] * 3 + ["scratch"] * 3
    flat = collapse_check(truth, ["good"] * 10, classes, 1 / 3)
    assert flat["collapsed"] and flat["pred_share"] == 1.0 and "'good' for 100%" in flat["collapse_reason"]
    fine = collapse_check(truth, truth, classes, 1.0)
    assert not fine["collapsed"] and fine["collapse_reason"] == ""
    skewed = ["good"] * 19 + ["hole"]  # the truth is 95% good: predicting it 95% of the time is no collapse
    assert not collapse_check(skewed, skewed, ["good", "hole"], 1.0)["collapsed"]
    assert collapse_check(truth, ["hole", "good", "scratch"] * 3 + ["good"], classes, 0.3)["collapsed"]  # chance


def test_collapsed_attempt_is_flagged_in_table_json_and_log(tiny: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    # a learning rate of 1e4 blows the weights up: every image ends on one class (or NaN logits -> class 0)
    exp = load_experiment(_experiment(tmp_path, tiny, [{"name": "ok"}, {"name": "diverged", "train": {
        "lr": 1e4, "optimizer": "sgd", "momentum": 0.0}}], epochs=2, folds=3, test=0.0))
    with caplog.at_level("WARNING"):
        rows = run_experiment(exp, tmp_path / "run", progress=False)
    bad = rows[1]
    assert bad["collapsed"] and bad["collapsed_folds"] >= 1 and bad["collapse_reason"]
    assert any("diverged COLLAPSED" in m for m in caplog.messages)
    md = (tmp_path / "run" / "comparison.md").read_text()
    assert "**COLLAPSED**" in md and "diverged collapsed" in md
    assert json.loads((tmp_path / "run" / "comparison.json").read_text())[1]["collapsed"] is True
