"""An experiment series: a base config, named attempts with overrides, one comparison table.

Experiment YAML::

    name: magnetic_tile_series
    data:
      dataset: ../shared/data/magnetic_tile     # or  manifest: splits/tile.csv  (from `defectlab data split`)
      split: {val: 0.15, test: 0.2, seed: 0}    # SplitConfig options, with `dataset` only ({folds: 5} = k-fold)
      #   groups: "csv:tiles.csv" or "regex:PATTERN": keep each group (shots of one part) in one fold
      classes: [blowhole, break, crack, fray, uneven]   # optional: keep only these classes
    base:
      model: {name: simple_cnn}
      train: {epochs: 10, image_size: 64}
    attempts:
      - name: baseline
      - name: augment
        based_on: baseline                      # optional: start from another attempt instead of the base
        train: {augment: basic}

Relative paths are relative to the YAML file. Splits: a manifest's train/val/test; in k-fold mode (a
manifest with a ``fold`` column) fold ``k`` validates and the other folds train, and the test set is the
manifest's test split, or, when it has none, fold ``k`` is the test set, fold ``k+1 mod K`` validates and
the remaining folds train (no image is both tested and used to pick the checkpoint).

Every name and option of every attempt, every file and every class/split count is checked before the
first attempt trains. Outputs under ``RUN/``: ``experiment.yaml`` (resolved); per attempt
``<attempt>/config.yaml`` and (per fold ``<attempt>/fold<k>/``) ``epochs.csv``, ``best.pt``,
``last.pt``, ``confusion.png``, ``per_class.csv``, ``result.json``; ``comparison.{md,csv,json}`` and
``curves.png``. Re-running the same command resumes: attempts (folds) with a ``result.json`` are
skipped, an interrupted one continues from its last epoch checkpoint.

``device`` (``classify run --device``) overrides every attempt's ``train.device`` without changing its
config (a run may resume on another device). Under ``torchrun --nproc-per-node N`` each attempt trains
data-parallel (``Trainer``); every process runs the series, process 0 alone writes the run folder.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from defectlab import distributed
from defectlab.classify.data import ExperimentCache
from defectlab.classify.models import ModelConfig, build_classifier
from defectlab.classify.pooled import patch_layer
from defectlab.classify.probe import ProbeFitter
from defectlab.classify.report import (
    aggregate,
    collapse_check,
    convergence_epoch,
    inference_ms,
    plot_confusion,
    plot_curves,
    write_per_class,
    write_table,
)
from defectlab.classify.train import TrainConfig, Trainer, check_config, predict_logits
from defectlab.config import from_dict, load_yaml, to_dict, write_json, write_yaml
from defectlab.data.index import GOOD, DatasetIndex, SampleRecord, open_dataset
from defectlab.errors import BadInputError, ConfigError
from defectlab.metrics.classification import classification_metrics

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    manifest: Path | None = None  # a split manifest (CSV of `defectlab data split`)
    dataset: Path | None = None  # or a dataset folder, split here with `split`
    split: dict[str, Any] = field(default_factory=dict)  # SplitConfig options (with `dataset`)
    classes: list[str] = field(default_factory=list)  # keep only these classes (empty: all)


@dataclass
class AttemptSpec:
    name: str
    based_on: str | None = None  # another attempt's name (default: the base config)
    description: str = ""  # "what it changed" in the table (default: the overrides)
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    base: dict[str, Any] = field(default_factory=dict)  # {model: {...}, train: {...}}
    attempts: list[AttemptSpec] = field(default_factory=list)


@dataclass
class Attempt:
    name: str
    changed: str
    model: ModelConfig
    train: TrainConfig


@dataclass
class Fold:
    name: str  # "" for a single split, "fold<k>" in k-fold mode
    train: list[SampleRecord]
    val: list[SampleRecord]
    test: list[SampleRecord]


# ------------------------------------------------------------------------------------------ config
def load_experiment(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    raw = load_yaml(path)
    raw["attempts"] = [a if isinstance(a, dict) else {"name": a} for a in raw.get("attempts") or []]
    cfg = from_dict(ExperimentConfig, raw, where=path.name)
    cfg.attempts = [from_dict(AttemptSpec, a, where=f"{path.name}: attempt {a.get('name', i)}")
                    if isinstance(a, dict) else a for i, a in enumerate(cfg.attempts)]
    if isinstance(cfg.data, dict):
        cfg.data = from_dict(DataConfig, cfg.data, where=f"{path.name}: data")
    for key in ("manifest", "dataset"):
        value = getattr(cfg.data, key)
        if value is not None:
            setattr(cfg.data, key, (path.parent / Path(value)).resolve())
    for section in [cfg.base.get("train") or {}] + [a.train for a in cfg.attempts]:  # an anomaly run
        if section.get("regions_from") and not Path(section["regions_from"]).is_absolute():
            section["regions_from"] = str((path.parent / section["regions_from"]).resolve())
    rule = str(cfg.data.split.get("groups") or "")
    if rule.startswith("csv:") and not Path(rule[4:]).is_absolute():  # a group table relative to the YAML
        cfg.data.split["groups"] = "csv:" + str((path.parent / rule[4:]).resolve())
    return cfg


# A name and the parameters that belong to it: naming another one drops the inherited parameters.
_PARAMS_OF = {"model": {"name": "options"}, "train": {"loss": "loss_params", "sampler": "sampler_params",
                                                      "method": "method_params"}}


def _merge(parent: dict[str, Any], spec: AttemptSpec) -> dict[str, Any]:
    out = copy.deepcopy(parent)
    for section, pairs in _PARAMS_OF.items():
        over = getattr(spec, section)
        sec = out.setdefault(section, {})
        for name_key, params_key in pairs.items():
            if name_key in over and over[name_key] != sec.get(name_key):
                sec.pop(params_key, None)
        for k, v in over.items():
            sec[k] = {**sec[k], **v} if isinstance(v, dict) and isinstance(sec.get(k), dict) else copy.deepcopy(v)
    return out


def _describe(spec: AttemptSpec) -> str:
    if spec.description:
        return spec.description
    parts = [f"{sec}.{k}={v}" for sec in ("model", "train") for k, v in getattr(spec, sec).items()]
    prefix = f"{spec.based_on} + " if spec.based_on else ""
    return prefix + (", ".join(parts) or "base config")


def resolve_attempts(cfg: ExperimentConfig) -> list[Attempt]:
    """Attempts with their full configs, every name and option checked (ConfigError otherwise)."""
    unknown = set(cfg.base) - {"model", "train"}
    if unknown:
        raise ConfigError(f"base: unknown section(s) {sorted(unknown)}; expected model and train")
    if not cfg.attempts:
        raise ConfigError("the experiment has no attempts")
    resolved: dict[str, dict[str, Any]] = {}
    attempts = []
    for spec in cfg.attempts:
        if spec.name in resolved:
            raise ConfigError(f"attempt name '{spec.name}' is used twice")
        if not spec.name or "/" in spec.name or spec.name.startswith("."):
            raise ConfigError(f"attempt name '{spec.name}' cannot be a folder name")
        if spec.based_on is not None and spec.based_on not in resolved:
            raise ConfigError(f"attempt '{spec.name}': based_on '{spec.based_on}' is not an earlier attempt")
        parent = resolved[spec.based_on] if spec.based_on else {"model": cfg.base.get("model", {}),
                                                                 "train": cfg.base.get("train", {})}
        full = _merge(parent, spec)
        resolved[spec.name] = full
        model = from_dict(ModelConfig, full["model"], where=f"attempt {spec.name}: model")
        train = from_dict(TrainConfig, full["train"], where=f"attempt {spec.name}: train")
        check_config(train)
        build_classifier(model, num_classes=2, image_size=train.image_size)  # names, options, weights
        if train.input == "pooled":
            patch_layer(model.name)  # a backbone with patch layers
        attempts.append(Attempt(spec.name, _describe(spec), model, train))
    return attempts


# -------------------------------------------------------------------------------------------- data
def load_folds(cfg: DataConfig, index: DatasetIndex | None = None) -> tuple[list[str], list[Fold], str]:
    """(classes, folds, source) with every class present in every split of every fold."""
    from defectlab.data.split import SplitConfig, make_split, manifest_folds, manifest_groups, read_manifest

    if index is not None or cfg.dataset is not None:
        if cfg.manifest is not None:
            raise ConfigError("data: give either a manifest or a dataset, not both")
        index = index if index is not None else open_dataset(cfg.dataset)  # type: ignore[arg-type]
        rows = make_split(index, from_dict(SplitConfig, cfg.split, where="data.split"))
        records = [r.record() for r in rows]
        folds_of = {str(r.path): r.fold for r in rows if r.fold is not None}
        groups_of = {str(r.path): r.group for r in rows if r.group}
        source = str(index.root)
    elif cfg.manifest is not None:
        if cfg.split:
            raise ConfigError("data.split applies to a dataset; a manifest is already split")
        records = read_manifest(cfg.manifest).records
        folds_of = manifest_folds(cfg.manifest)
        groups_of = manifest_groups(cfg.manifest)
        source = str(cfg.manifest)
    else:
        raise ConfigError("data: give a manifest or a dataset")
    if cfg.classes:
        known = sorted({r.defect_type for r in records})
        missing = [c for c in cfg.classes if c not in known]
        if missing:
            raise ConfigError(f"data.classes: {missing} not in the data; classes: {', '.join(known)}")
        records = [r for r in records if r.defect_type in cfg.classes]
    present = {r.defect_type for r in records}
    classes = ([GOOD] if GOOD in present else []) + sorted(present - {GOOD})
    if len(classes) < 2:
        raise BadInputError(source, f"need at least 2 classes to classify, found {classes}")
    folds = _make_folds(records, folds_of)
    _warn_group_leaks(folds, groups_of, source)
    for fold in folds:
        for split in ("train", "val", "test"):
            have = {r.defect_type for r in getattr(fold, split)}
            for c in classes:
                if c not in have:
                    where = f" of {fold.name}" if fold.name else ""
                    raise BadInputError(source, f"class '{c}' has no images in the {split} split{where}; "
                                                "every class needs images in train, val and test")
    return classes, folds, source


def _warn_group_leaks(folds: list[Fold], groups_of: dict[str, str], source: str) -> None:
    """Log a warning when a group (shots of one part) is on two sides of a fold's train/val/test."""
    if not groups_of:
        return
    for fold in folds:
        sides = [{groups_of.get(str(r.path), "") for r in getattr(fold, s)} - {""} for s in ("train", "val", "test")]
        leaked = (sides[0] & (sides[1] | sides[2])) | (sides[1] & sides[2])
        if leaked:
            log.warning("%s%s: %d group(s) on two sides of the split (e.g. %s): the scores measure partly "
                        "whether the model has seen that part", source, f" {fold.name}" if fold.name else "",
                        len(leaked), sorted(leaked)[0])


def _make_folds(records: list[SampleRecord], folds_of: dict[str, int]) -> list[Fold]:
    test = [r for r in records if r.split == "test"]
    if not folds_of:
        return [Fold("", [r for r in records if r.split == "train"], [r for r in records if r.split == "val"], test)]
    k = max(folds_of.values()) + 1
    in_cv = [r for r in records if str(r.path) in folds_of]
    out = []
    for i in range(k):
        fold = [r for r in in_cv if folds_of[str(r.path)] == i]
        if test:
            rest = [r for r in in_cv if folds_of[str(r.path)] != i]
            out.append(Fold(f"fold{i}", rest, fold, test))
        else:
            val = [r for r in in_cv if folds_of[str(r.path)] == (i + 1) % k]
            rest = [r for r in in_cv if folds_of[str(r.path)] not in (i, (i + 1) % k)]
            out.append(Fold(f"fold{i}", rest, val, fold))
    return out


# --------------------------------------------------------------------------------------------- run
def run_experiment(cfg: ExperimentConfig, out: str | Path, *, index: DatasetIndex | None = None,
                   only: list[str] | None = None, progress: bool = True,
                   on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
                   device: str | None = None) -> list[dict[str, Any]]:
    """Train (or resume) every attempt and write the comparison; returns the table rows."""
    out = Path(out)
    attempts = resolve_attempts(cfg)
    env = distributed.setup(device or attempts[0].train.device, what="--device" if device else "train.device")
    try:
        return _run(cfg, out, attempts, index, only, progress and env.is_rank0, on_epoch_end, device, env)
    finally:
        distributed.teardown()


def _run(cfg: ExperimentConfig, out: Path, attempts: list[Attempt], index: DatasetIndex | None,
         only: list[str] | None, progress: bool, on_epoch_end: Callable[[int, dict[str, float]], None] | None,
         device: str | None, env: distributed.DistEnv) -> list[dict[str, Any]]:
    rank0 = env.is_rank0
    if only:
        unknown = sorted(set(only) - {a.name for a in attempts})
        if unknown:
            raise ConfigError(f"--attempt {unknown}: not in the experiment ({', '.join(a.name for a in attempts)})")
        attempts = [a for a in attempts if a.name in only]
    classes, folds, source = load_folds(cfg.data, index)
    data_desc = {"source": source, "classes": classes,
                 "counts": {f.name or "split": {s: len(getattr(f, s)) for s in ("train", "val", "test")}
                            for f in folds}}
    if rank0:
        write_yaml(out / "experiment.yaml", {"name": cfg.name, "data": to_dict(cfg.data),
                                             "resolved_data": data_desc, "attempts": [to_dict(a) for a in attempts]})
    cache = ExperimentCache([r for f in folds for s in (f.train, f.val, f.test) for r in s], classes)
    rows, curves = [], {}
    for attempt in attempts:
        adir = out / attempt.name
        config = {"attempt": attempt.name, "changed": attempt.changed, "model": to_dict(attempt.model),
                  "train": to_dict(attempt.train), "data": data_desc}
        if (adir / "config.yaml").is_file() and load_yaml(adir / "config.yaml") != to_dict(config):
            raise ConfigError(f"{adir}: was run with another config or data; delete it or use another --out")
        if rank0:
            write_yaml(adir / "config.yaml", config)
        fold_rows, histories = [], []
        for fold in folds:
            fdir = adir / fold.name if fold.name else adir
            result, history = _run_fold(attempt, fold, fdir, classes, cache, progress, on_epoch_end, device, rank0)
            fold_rows.append(result)
            histories.append(history)
        row = aggregate(fold_rows) if len(folds) > 1 else fold_rows[0]
        if row.get("collapsed") and rank0:
            log.warning("attempt %s COLLAPSED: %s", attempt.name, row["collapse_reason"])
        if len(folds) > 1 and rank0:
            write_json(adir / "result.json", row)
        rows.append(row)
        curves[attempt.name] = histories
        if rank0:
            tqdm.write(f"{attempt.name}: test acc {row['test_acc']:.3f}, balanced acc {row['balanced_acc']:.3f}, "
                       f"macro-F1 {row['macro_f1']:.3f}")
    if rank0:
        write_table(rows, out)
        plot_curves(curves, out / "curves.png")
    distributed.barrier(env)  # the run folder is complete when any process returns
    return rows


def _run_fold(attempt: Attempt, fold: Fold, fdir: Path, classes: list[str], cache: ExperimentCache, progress: bool,
              on_epoch_end: Callable[[int, dict[str, float]], None] | None, device: str | None = None,
              rank0: bool = True) -> tuple[dict[str, Any], list[dict]]:
    import json

    done = fdir / "result.json"
    if done.is_file():
        result = json.loads(done.read_text())
        return result, result["history"]
    t = attempt.train
    train, val, test = (cache.subset(getattr(fold, s), t, train=s == "train") for s in ("train", "val", "test"))
    fitter = ProbeFitter if t.probe != "none" else Trainer
    trainer = fitter(attempt.model, t, classes, fdir, progress=progress, on_epoch_end=on_epoch_end,
                     device=device).fit(train, val)
    setup, device = trainer.setup_, trainer.device_
    logits = predict_logits(setup, test.images, batch_size=t.eval_batch_size, device=device)
    pred = logits.argmax(1)
    names = [classes[i] for i in test.labels.tolist()], [classes[i] for i in pred.tolist()]
    metrics = classification_metrics(*names, labels=classes)
    history = trainer.history_
    best = history[trainer.best_epoch_ - 1]
    x = setup.augment(test.images[:32].to(device), train=False)
    result = {
        "attempt": attempt.name, "changed": attempt.changed, "model": attempt.model.name,
        "weights": setup.classifier.weights_tag, "fold": fold.name or None,
        "epochs_run": len(history), "convergence_epoch": convergence_epoch([h["val_loss"] for h in history]),
        "best_epoch": trainer.best_epoch_, "stopped_early": trainer.stopped_early_,
        "best_val_loss": best["val_loss"], "best_val_acc": best["val_acc"],
        "test_acc": metrics["accuracy"], "balanced_acc": metrics["balanced_accuracy"], "macro_f1": metrics["macro_f1"],
        "per_class_recall": {c: m["recall"] for c, m in metrics["per_class"].items()},
        "never_predicted": metrics["never_predicted"],
        **collapse_check(*names, classes, metrics["balanced_accuracy"]),
        "train_seconds": trainer.train_seconds_, "params": sum(p.numel() for p in setup.model.parameters()),
        "trainable_params": sum(p.numel() for p in setup.model.parameters() if p.requires_grad),
        "infer_ms": inference_ms(setup.model, x), "n_train": len(train), "n_val": len(val), "n_test": len(test),
        "class_counts": trainer.class_counts_, "metrics": metrics, "history": history,
    }
    if rank0:
        write_per_class(metrics, fdir / "per_class.csv")
        plot_confusion(metrics["confusion_matrix"], classes, fdir / "confusion.png",
                       f"{attempt.name} {fold.name} test acc {metrics['accuracy']:.3f}")
        write_json(done, result)
    return result, history
