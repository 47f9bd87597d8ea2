"""Supervised splits for defect-type classification, written as CSV manifests experiments read.

MVTec's train set holds only good images, so the labelled pool is every test image plus (optionally)
train/good. From that pool :func:`make_split` builds

* a stratified train/val/test split (per class, deterministic per seed), or
* k folds (every non-test image gets a fold 0..K-1) plus an optional held-out test set,

with an optional *group rule* (``defectlab.data.groups``: several shots of one part are one group) that
keeps every group on one side: no group in two of train/val/test or in two folds, still stratified per
class (a group counts for its most common class); optionally after per-class ratio subsampling
(``good:2,defect:1`` keeps good:each-defect = 2:1) and with an optional long-tail profile on the train split
(n_i = n_max * (1/IF)^(i/(C-1))).

Manifest CSV columns: ``path,mask_path,defect_type,split,fold,group`` (absolute paths; split in
train/val/test; fold empty unless k-fold; group empty without a group rule). A sidecar
``<manifest>.json`` holds the options, the dataset root and the counts per split and class.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from defectlab.config import atomic_write_text, to_dict, write_json
from defectlab.data.index import GOOD, DatasetIndex, SampleRecord
from defectlab.errors import BadInputError, ConfigError

COLUMNS = ("path", "mask_path", "defect_type", "split", "fold", "group")
SPLITS = ("train", "val", "test")
DEFECT_ALIAS = "defect"  # in a ratio: every defect class not named explicitly


@dataclass(frozen=True)
class SplitConfig:
    val: float = 0.15  # fraction of each class for validation (ignored with folds)
    test: float = 0.15  # fraction of each class held out for testing (0: none)
    folds: int = 0  # >= 2: k-fold over the non-test images instead of a val split
    use_train_good: bool = True  # MVTec: add train/good to the labelled pool
    ratio: dict[str, float] = field(default_factory=dict)  # per-class weights, e.g. {"good": 2, "defect": 1}
    classes: tuple[str, ...] = ()  # keep only these classes (empty: all)
    long_tail: float | None = None  # imbalance factor of an exponential profile on the train split
    seed: int = 0
    groups: str = ""  # a defectlab.data.groups rule ("regex:PATTERN", "csv:PATH", "auto"); "": no groups

    def __post_init__(self) -> None:
        if not (0 <= self.val < 1 and 0 <= self.test < 1):
            raise ConfigError(f"split fractions must be in [0, 1): val={self.val}, test={self.test}")
        if self.folds and self.folds < 2:
            raise ConfigError(f"--folds must be at least 2, got {self.folds}")
        if not self.folds and self.val + self.test >= 1:
            raise ConfigError(f"val + test must leave images for training: {self.val} + {self.test} >= 1")
        if self.long_tail is not None and self.long_tail < 1:
            raise ConfigError(f"long-tail imbalance factor must be >= 1, got {self.long_tail}")
        bad = {k: v for k, v in self.ratio.items() if not (isinstance(v, (int, float)) and v > 0)}
        if bad:
            raise ConfigError(f"ratio weights must be positive numbers, got {bad}")


@dataclass(frozen=True)
class ManifestRow:
    path: Path
    mask_path: Path | None
    defect_type: str
    split: str  # "train" | "val" | "test"
    fold: int | None = None
    group: str = ""  # the image's group under the split's group rule ("": none)

    def record(self) -> SampleRecord:
        return SampleRecord(self.path, self.split, self.defect_type, self.mask_path)


def parse_ratio(text: str | None) -> dict[str, float]:
    """``"good:2,defect:1"`` -> ``{"good": 2.0, "defect": 1.0}``."""
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition(":")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ConfigError(f"bad ratio '{part.strip()}': expected CLASS:WEIGHT, e.g. good:2,defect:1")
    return out


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator per (seed, key): adding a class never changes the draws of another."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def _shuffled(records: list[SampleRecord], seed: int, key: str) -> list[SampleRecord]:
    records = sorted(records, key=lambda r: str(r.path))
    order = _rng(seed, key).permutation(len(records))
    return [records[i] for i in order]


def _check_classes(wanted: list[str], known: list[str], what: str) -> None:
    for name in wanted:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown class '{name}' in {what}{hint}; classes: {', '.join(known)}")


def labelled_pool(index: DatasetIndex, cfg: SplitConfig) -> dict[str, list[SampleRecord]]:
    """{class: records} of the images that can be split (MVTec train/good only if asked)."""
    pool: dict[str, list[SampleRecord]] = {}
    for r in index.records:
        if index.layout == "mvtec" and r.split == "train" and not cfg.use_train_good:
            continue
        pool.setdefault(r.defect_type, []).append(r)
    if cfg.classes:
        _check_classes(list(cfg.classes), sorted(pool), "--classes")
        pool = {c: pool[c] for c in cfg.classes}
    if not pool:
        raise BadInputError(index.root, "no labelled images to split")
    return dict(sorted(pool.items()))


def ratio_targets(counts: dict[str, int], ratio: dict[str, float]) -> dict[str, int]:
    """Per-class sizes keeping the weights' proportions exactly, as large as every class allows.

    Class ``c`` with weight ``w_c`` keeps ``floor(s * w_c)`` images, ``s = min_c n_c / w_c``; the key
    ``defect`` gives its weight to every defect class not named; classes without a weight are kept whole.
    """
    _check_classes([k for k in ratio if k != DEFECT_ALIAS], sorted(counts), "--ratio")
    weights = {c: ratio.get(c, ratio.get(DEFECT_ALIAS) if c != GOOD else None) for c in counts}
    weights = {c: w for c, w in weights.items() if w is not None}
    if not weights:
        return dict(counts)
    scale = min(counts[c] / w for c, w in weights.items())
    return {c: (min(n, math.floor(scale * weights[c] + 1e-9)) if c in weights else n)
            for c, n in counts.items()}


def long_tail_targets(counts: dict[str, int], factor: float) -> dict[str, int]:
    """Exponential profile n_i = n_max * (1/IF)^(i/(C-1)); classes ranked by count (desc), then name."""
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    n_max, k = counts[ranked[0]], len(ranked)
    out = {}
    for i, c in enumerate(ranked):
        target = n_max * (1.0 / factor) ** (i / (k - 1)) if k > 1 else n_max
        out[c] = max(1, min(counts[c], math.floor(target + 1e-9)))
    return out


def _n_held(n: int, frac: float) -> int:
    return 0 if frac <= 0 else max(1, round(n * frac))


def make_split(index: DatasetIndex, cfg: SplitConfig) -> list[ManifestRow]:
    """Rows of the manifest (only the images kept), deterministic for ``cfg.seed``."""
    pool = labelled_pool(index, cfg)
    if cfg.ratio:
        targets = ratio_targets({c: len(v) for c, v in pool.items()}, cfg.ratio)
        pool = {c: _shuffled(v, cfg.seed, "ratio:" + c)[: targets[c]] for c, v in pool.items()}
    if (cfg.groups or "").strip() not in ("", "none"):
        rows = _grouped_rows(pool, cfg)
        return _apply_long_tail(rows, cfg.long_tail, cfg.seed) if cfg.long_tail is not None else rows
    rows: list[ManifestRow] = []
    fold_offset = 0
    for cls, recs in pool.items():
        recs = _shuffled(recs, cfg.seed, "split:" + cls)
        n = len(recs)
        n_test = _n_held(n, cfg.test)
        n_val = 0 if cfg.folds else _n_held(n, cfg.val)
        need = cfg.folds if cfg.folds else 1
        if n - n_test - n_val < need:
            parts = [f"{n_test} test"] + ([f"{n_val} val"] if not cfg.folds else [])
            raise ConfigError(
                f"class '{cls}' has {n} image(s): too few to stratify ({', '.join(parts)} and at least "
                f"{need} for {'each of the ' + str(cfg.folds) + ' folds' if cfg.folds else 'train'}); "
                "drop it with --classes or lower the fractions"
            )
        for r in recs[:n_test]:
            rows.append(ManifestRow(r.path, r.mask_path, cls, "test"))
        for r in recs[n_test:n_test + n_val]:
            rows.append(ManifestRow(r.path, r.mask_path, cls, "val"))
        for i, r in enumerate(recs[n_test + n_val:]):
            fold = (fold_offset + i) % cfg.folds if cfg.folds else None
            rows.append(ManifestRow(r.path, r.mask_path, cls, "train", fold))
        if cfg.folds:
            fold_offset = (fold_offset + n - n_test) % cfg.folds
    if cfg.long_tail is not None:
        rows = _apply_long_tail(rows, cfg.long_tail, cfg.seed)
    return rows


def _grouped_rows(pool: dict[str, list[SampleRecord]], cfg: SplitConfig) -> list[ManifestRow]:
    """Whole groups to test, val and folds, per class (a group's class is its most common one).

    Per class, the groups are shuffled (seed), test and val take, in that order, each group that brings
    them nearer their fraction of the class's images, and the remaining groups go, largest first, to the fold with
    the fewest images of the class (then the fewest images overall): folds stay stratified and balanced.
    """
    from defectlab.data.groups import group_keys

    records = [r for recs in pool.values() for r in recs]
    keys = group_keys([str(r.path) for r in records], cfg.groups)
    members: dict[str, list[SampleRecord]] = {}
    for r, k in zip(records, keys, strict=True):
        members.setdefault(k, []).append(r)
    by_class: dict[str, list[str]] = {}
    for k, recs in sorted(members.items()):
        counts = Counter(r.defect_type for r in recs)
        label = min(counts, key=lambda c: (-counts[c], c))
        by_class.setdefault(label, []).append(k)
    rows: list[ManifestRow] = []
    fold_sizes = [Counter() for _ in range(cfg.folds)]  # per fold: {class: images}, "" = all classes
    for cls in sorted(by_class):
        order = _rng(cfg.seed, "groups:" + cls).permutation(len(by_class[cls]))
        groups = [by_class[cls][i] for i in order]
        n = sum(len(members[g]) for g in groups)
        held: dict[str, list[str]] = {"test": [], "val": []}
        for split, frac in (("test", cfg.test), ("val", 0.0 if cfg.folds else cfg.val)):
            target, count = _n_held(n, frac), 0
            for g in list(groups):  # in shuffled order, each group that brings the count nearer the target
                size = len(members[g])
                if count < target and (count + size - target <= target - count or not held[split]):
                    held[split].append(g)
                    groups.remove(g)
                    count += size
        need = cfg.folds or 1
        if len(groups) < need:
            parts = ", ".join(f"{len(held[s])} {s}" for s in ("test", "val") if held[s])
            raise ConfigError(
                f"class '{cls}' has {len(by_class[cls])} group(s) under the group rule: too few to split "
                f"({parts or 'none held out'} and at least {need} for "
                f"{'each of the ' + str(cfg.folds) + ' folds' if cfg.folds else 'train'}); "
                "drop it with --classes or lower the fractions")
        assign: dict[str, tuple[str, int | None]] = {g: (s, None) for s in held for g in held[s]}
        for g in sorted(groups, key=lambda g: -len(members[g])):  # stable: shuffled order among equal sizes
            if cfg.folds:
                k = min(range(cfg.folds), key=lambda i: (fold_sizes[i][cls], fold_sizes[i][""], i))
                fold_sizes[k][cls] += len(members[g])
                fold_sizes[k][""] += len(members[g])
                assign[g] = ("train", k)
            else:
                assign[g] = ("train", None)
        for g, (split, fold) in assign.items():
            rows += [ManifestRow(r.path, r.mask_path, r.defect_type, split, fold, g) for r in members[g]]
    return sorted(rows, key=lambda r: (r.defect_type, SPLITS.index(r.split), str(r.path)))


def group_leaks(rows: list[ManifestRow]) -> dict[str, list[str]]:
    """{group: the splits (and folds) it appears in} for every group seen on more than one side."""
    sides: dict[str, set[str]] = {}
    for r in rows:
        if r.group:
            sides.setdefault(r.group, set()).add(r.split if r.fold is None else f"fold{r.fold}")
    return {g: sorted(s) for g, s in sorted(sides.items()) if len(s) > 1}


def _apply_long_tail(rows: list[ManifestRow], factor: float, seed: int) -> list[ManifestRow]:
    train = Counter(r.defect_type for r in rows if r.split == "train")
    targets = long_tail_targets(dict(train), factor)
    keep: set[Path] = set()
    for cls, n in targets.items():
        cls_rows = sorted((r for r in rows if r.split == "train" and r.defect_type == cls),
                          key=lambda r: str(r.path))
        order = _rng(seed, "long_tail:" + cls).permutation(len(cls_rows))[:n]
        keep.update(cls_rows[i].path for i in order)
    return [r for r in rows if r.split != "train" or r.path in keep]


def split_counts(rows: list[ManifestRow]) -> dict[str, dict[str, int]]:
    """{split: {class: n}} (k-fold: train is listed per fold as ``fold<k>`` too)."""
    out: dict[str, Counter[str]] = {}
    for r in rows:
        out.setdefault(r.split, Counter())[r.defect_type] += 1
        if r.fold is not None:
            out.setdefault(f"fold{r.fold}", Counter())[r.defect_type] += 1
    order = {s: i for i, s in enumerate(SPLITS)}
    return {s: dict(sorted(out[s].items())) for s in sorted(out, key=lambda s: (order.get(s, 9), s))}


def write_manifest(rows: list[ManifestRow], path: str | Path, cfg: SplitConfig, *,
                   root: str | Path | None = None) -> Path:
    """Write the CSV and its ``<manifest>.json`` sidecar (atomically); returns the sidecar path."""
    path = Path(path)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([str(Path(r.path).resolve()), str(Path(r.mask_path).resolve()) if r.mask_path else "",
                         r.defect_type, r.split, "" if r.fold is None else r.fold, r.group])
    atomic_write_text(path, buf.getvalue())
    sidecar = path.with_name(path.name + ".json")
    write_json(sidecar, {
        "manifest": str(path.resolve()),
        "dataset_root": str(Path(root).resolve()) if root is not None else None,
        "options": to_dict(cfg),
        "classes": sorted({r.defect_type for r in rows}, key=lambda c: (c != GOOD, c)),
        "counts": split_counts(rows),
        "total": len(rows),
        **({"groups": len({r.group for r in rows})} if cfg.groups else {}),
    })
    return sidecar


def _read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise BadInputError(path, "manifest not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(path, f"cannot read manifest ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS[:4] if c not in (reader.fieldnames or [])]
    if missing:
        raise BadInputError(
            path, f"not a split manifest: missing column(s) {missing}; expected {','.join(COLUMNS)}")
    return [(i, row) for i, row in enumerate(reader, start=2)]


def _resolve(path: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else (path.parent / p)


def read_manifest(path: str | Path, *, check_files: bool = True) -> DatasetIndex:
    """A manifest as a DatasetIndex (layout ``"manifest"``; records keep split train/val/test).

    A row naming a missing image or mask raises BadInputError naming the manifest line and the file.
    """
    path = Path(path)
    records: list[SampleRecord] = []
    for line, row in _read_rows(path):
        split = (row.get("split") or "").strip()
        if split not in SPLITS:
            raise BadInputError(path, f"line {line}: split '{split}' is not one of {', '.join(SPLITS)}")
        if not (row.get("path") or "").strip() or not (row.get("defect_type") or "").strip():
            raise BadInputError(path, f"line {line}: empty path or defect_type")
        img = _resolve(path, row["path"].strip())
        mask = _resolve(path, row["mask_path"].strip()) if (row.get("mask_path") or "").strip() else None
        if check_files:
            for what, f in (("image", img), ("mask", mask)):
                if f is not None and not f.is_file():
                    raise BadInputError(path, f"line {line}: {what} file {f} not found")
        records.append(SampleRecord(img, split, row["defect_type"].strip(), mask))
    if not records:
        raise BadInputError(path, "manifest has no rows")
    root = _sidecar_root(path)
    return DatasetIndex(root=root, name=path.stem, layout="manifest", records=records)


def _sidecar_root(path: Path) -> Path:
    sidecar = path.with_name(path.name + ".json")
    try:
        root = json.loads(sidecar.read_text()).get("dataset_root")
        if root:
            return Path(root)
    except (OSError, ValueError, AttributeError):
        pass
    return path.parent


def manifest_folds(path: str | Path) -> dict[str, int]:
    """{image path: fold} of a k-fold manifest (empty when the manifest has no folds)."""
    path = Path(path)
    out: dict[str, int] = {}
    for line, row in _read_rows(path):
        value = (row.get("fold") or "").strip()
        if not value:
            continue
        try:
            out[str(_resolve(path, row["path"].strip()))] = int(value)
        except ValueError:
            raise BadInputError(path, f"line {line}: fold '{value}' is not an integer") from None
    return out


def manifest_groups(path: str | Path) -> dict[str, str]:
    """{image path: group} of a manifest written with a group rule (empty when it has none)."""
    path = Path(path)
    return {str(_resolve(path, row["path"].strip())): row["group"].strip()
            for _, row in _read_rows(path) if (row.get("group") or "").strip()}


def fold_records(index: DatasetIndex, folds: dict[str, int],
                 k: int) -> tuple[list[SampleRecord], list[SampleRecord]]:
    """(train, val) records of fold ``k``: the fold's images validate, the other folds' images train."""
    in_cv = [r for r in index.records if str(r.path) in folds]
    if k not in set(folds.values()):
        raise ConfigError(f"fold {k} not in manifest (folds: {sorted(set(folds.values()))})")
    train = [r for r in in_cv if folds[str(r.path)] != k]
    val = [SampleRecord(r.path, "val", r.defect_type, r.mask_path) for r in in_cv if folds[str(r.path)] == k]
    return train, val
