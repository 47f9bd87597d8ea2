"""``defectlab data split``: stratification, ratios, k-fold, long tail, determinism, manifests."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import pytest

from defectlab.cli import main as cli_main
from defectlab.data.index import DatasetIndex, SampleRecord, open_dataset
from defectlab.data.split import (
    SplitConfig,
    fold_records,
    long_tail_targets,
    make_split,
    manifest_folds,
    parse_ratio,
    read_manifest,
    split_counts,
    write_manifest,
)
from defectlab.errors import BadInputError, ConfigError

COUNTS = {"good": 60, "dent": 20, "scratch": 13, "stain": 7}


def _index(counts: dict[str, int] = COUNTS, layout: str = "folder") -> DatasetIndex:
    """Records only (make_split reads no pixels): folder layout, split 'all'."""
    recs = [SampleRecord(Path(f"/data/{c}/{i:03d}.png"), "all", c,
                         None if c == "good" else Path(f"/m/{c}{i}.png"))
            for c, n in counts.items() for i in range(n)]
    return DatasetIndex(Path("/data"), "toy", layout, recs)


def _by(rows, split=None):  # type: ignore[no-untyped-def]
    return Counter(r.defect_type for r in rows if split is None or r.split == split)


def test_stratified_split_keeps_class_proportions() -> None:
    cfg = SplitConfig(val=0.2, test=0.25, seed=1)
    rows = make_split(_index(), cfg)
    assert len(rows) == sum(COUNTS.values()) and len({r.path for r in rows}) == len(rows)  # disjoint, covers
    for cls, n in COUNTS.items():
        for split, frac in (("val", 0.2), ("test", 0.25), ("train", 0.55)):
            assert abs(_by(rows, split)[cls] - n * frac) <= 1, (cls, split)
    assert {r.split for r in rows} == {"train", "val", "test"} and all(r.fold is None for r in rows)
    assert all((r.mask_path is None) == (r.defect_type == "good") for r in rows)


def test_split_is_deterministic_per_seed() -> None:
    a = make_split(_index(), SplitConfig(seed=7))
    b = make_split(_index(), SplitConfig(seed=7))
    c = make_split(_index(), SplitConfig(seed=8))
    assert a == b
    assert [(r.path, r.split) for r in a] != [(r.path, r.split) for r in c]
    assert split_counts(a) == split_counts(c)  # same sizes, other images


def test_adding_a_class_does_not_change_the_others() -> None:
    a = make_split(_index(), SplitConfig(seed=3))
    b = make_split(_index({**COUNTS, "zzz": 10}), SplitConfig(seed=3))
    assert {(r.path, r.split) for r in a} == {(r.path, r.split) for r in b if r.defect_type != "zzz"}


def test_ratio_subsampling() -> None:
    rows = make_split(_index(), SplitConfig(ratio=parse_ratio("good:2,defect:1")))
    assert _by(rows) == {"good": 14, "dent": 7, "scratch": 7, "stain": 7}  # s = min(60/2, 20, 13, 7) = 7
    rows = make_split(_index(), SplitConfig(ratio={"good": 1, "dent": 2}))  # s = min(60, 10); rest untouched
    assert _by(rows) == {"good": 10, "dent": 20, "scratch": 13, "stain": 7}
    with pytest.raises(ConfigError, match="unknown class 'dnet' in --ratio \\(did you mean 'dent'\\?\\)"):
        make_split(_index(), SplitConfig(ratio={"dnet": 1}))
    with pytest.raises(ConfigError, match="expected CLASS:WEIGHT"):
        parse_ratio("good=2")


def test_classes_filter_and_unknown_class() -> None:
    rows = make_split(_index(), SplitConfig(classes=("good", "dent")))
    assert set(_by(rows)) == {"good", "dent"}
    with pytest.raises(ConfigError, match="unknown class 'scrach'.*did you mean 'scratch'"):
        make_split(_index(), SplitConfig(classes=("scrach",)))


def test_too_few_images_names_the_class() -> None:
    with pytest.raises(ConfigError, match="class 'tiny' has 2 image\\(s\\): too few to stratify"):
        make_split(_index({**COUNTS, "tiny": 2}), SplitConfig(val=0.1, test=0.1))
    make_split(_index({**COUNTS, "tiny": 3}), SplitConfig(val=0.1, test=0.1))  # 1/1/1 works
    with pytest.raises(ConfigError, match="class 'stain' has 7 image.*each of the 5 folds"):
        make_split(_index(), SplitConfig(folds=5, test=0.5))
    with pytest.raises(ConfigError, match="val \\+ test"):
        SplitConfig(val=0.5, test=0.5)


def test_kfold_disjoint_covering_and_balanced() -> None:
    k = 4
    rows = make_split(_index(), SplitConfig(folds=k, test=0.15, seed=2))
    test = [r for r in rows if r.split == "test"]
    cv = [r for r in rows if r.split == "train"]
    assert {r.split for r in rows} == {"train", "test"}
    assert len(cv) + len(test) == sum(COUNTS.values()) and not {r.path for r in cv} & {r.path for r in test}
    assert all(r.fold in range(k) for r in cv) and all(r.fold is None for r in test)
    sizes = Counter(r.fold for r in cv)
    assert max(sizes.values()) - min(sizes.values()) <= 1
    for cls in COUNTS:
        per_fold = Counter(r.fold for r in cv if r.defect_type == cls)
        assert len(per_fold) == k and max(per_fold.values()) - min(per_fold.values()) <= 1


def test_long_tail_profile_on_train_only() -> None:
    base = make_split(_index(), SplitConfig(seed=4))
    rows = make_split(_index(), SplitConfig(long_tail=10, seed=4))
    train = _by(base, "train")  # good 42, dent 14, scratch 9, stain 5
    ranked = sorted(train, key=lambda c: (-train[c], c))
    expected = {c: max(1, min(train[c], math.floor(train[ranked[0]] * 0.1 ** (i / 3) + 1e-9)))
                for i, c in enumerate(ranked)}
    assert _by(rows, "train") == expected
    assert expected == long_tail_targets(dict(train), 10)
    assert expected["good"] == train["good"] and expected["stain"] == math.floor(train["good"] / 10)
    for split in ("val", "test"):
        assert [r for r in rows if r.split == split] == [r for r in base if r.split == split]
    kept = {r.path for r in rows if r.split == "train"}
    assert kept <= {r.path for r in base if r.split == "train"}
    assert make_split(_index(), SplitConfig(long_tail=10, seed=4)) == rows


def test_long_tail_targets_by_hand() -> None:
    # 5 classes of 100, IF 100: 100, 31.6, 10, 3.16, 1; ties ranked by name
    assert long_tail_targets({c: 100 for c in "edcba"}, 100) == {"a": 100, "b": 31, "c": 10, "d": 3, "e": 1}


def test_mvtec_pool_with_and_without_train_good(synthetic_object: Path) -> None:
    index = open_dataset(synthetic_object)
    with_good = make_split(index, SplitConfig(val=0.2, test=0.2))
    without = make_split(index, SplitConfig(val=0.2, test=0.2, use_train_good=False))
    assert _by(with_good)["good"] == 32 and _by(without)["good"] == 8
    assert all("train/good" not in str(r.path) for r in without)


def test_manifest_round_trip(synthetic_object: Path, tmp_path: Path) -> None:
    index = open_dataset(synthetic_object)
    cfg = SplitConfig(folds=3, test=0.2, seed=5)
    rows = make_split(index, cfg)
    out = tmp_path / "m.csv"
    sidecar = write_manifest(rows, out, cfg, root=index.root)
    with out.open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["path", "mask_path", "defect_type", "split", "fold", "group"]
    assert all(Path(r["path"]).is_absolute() for r in table)
    assert {r["fold"] for r in table if r["split"] == "test"} == {""}
    meta = json.loads(sidecar.read_text())
    assert sidecar.name == "m.csv.json" and meta["options"]["folds"] == 3 and meta["total"] == len(rows)
    assert meta["dataset_root"] == str(synthetic_object.resolve()) and meta["counts"] == split_counts(rows)
    back = read_manifest(out)
    assert back.layout == "manifest" and back.root == synthetic_object.resolve()
    assert [(r.path, r.defect_type, r.split, r.mask_path) for r in back.records] == \
        [(p.path.resolve(), p.defect_type, p.split, p.mask_path.resolve() if p.mask_path else None)
         for p in rows]
    folds = manifest_folds(out)
    assert sorted(set(folds.values())) == [0, 1, 2] and len(folds) == sum(r.split == "train" for r in rows)
    train, val = fold_records(back, folds, 1)
    assert not {r.path for r in train} & {r.path for r in val} and len(train) + len(val) == len(folds)
    assert all(r.split == "val" for r in val)
    from defectlab.data.describe import describe_path

    rep, _ = describe_path(out)  # describe reads manifests too
    assert rep["dataset"]["layout"] == "manifest" and rep["splits"] == {
        s: dict(sorted(c.items(), key=lambda kv: (kv[0] != "good", kv[0])))
        for s, c in split_counts(rows).items() if not s.startswith("fold")}


def test_manifest_naming_a_missing_file(synthetic_object: Path, tmp_path: Path) -> None:
    index = open_dataset(synthetic_object)
    rows = make_split(index, SplitConfig())
    out = tmp_path / "m.csv"
    write_manifest(rows, out, SplitConfig())
    lines = out.read_text().splitlines()
    gone = tmp_path / "gone.png"
    lines[3] = ",".join([str(gone)] + lines[3].split(",")[1:])
    out.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInputError, match=f"line 4: image file {gone} not found") as exc:
        read_manifest(out)
    assert str(exc.value).startswith(str(out)) and "\n" not in str(exc.value)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(BadInputError, match="not a split manifest"):
        read_manifest(tmp_path / "bad.csv")


def test_cli_split_prints_counts_and_reads_manifests(synthetic_object: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.csv"
    assert cli_main(["data", "split", str(synthetic_object), "--out", str(out), "--ratio", "good:2,defect:1",
                     "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "contamination" in printed
    meta = json.loads(out.with_name("s.csv.json").read_text())
    assert meta["options"]["ratio"] == {"good": 2.0, "defect": 1.0}
    assert sum(meta["counts"]["train"].values()) + sum(meta["counts"]["val"].values()) + \
        sum(meta["counts"]["test"].values()) == 12 + 4 * 6
    again = tmp_path / "again.csv"
    assert cli_main(["data", "split", str(out), "--out", str(again), "--folds", "2", "--test", "0"]) == 0
    assert len(manifest_folds(again)) == 36
    assert cli_main(["data", "split", str(synthetic_object), "--out", str(out), "--classes", "nope"]) == 2
    assert "error: unknown class 'nope'" in capsys.readouterr().err


def test_magnetic_tile_split_counts() -> None:
    from tests.conftest import shared_dataset

    index = open_dataset(shared_dataset("magnetic_tile"))
    rows = make_split(index, SplitConfig(ratio={"good": 2, "defect": 1}, seed=0))
    assert _by(rows) == {"good": 64, "blowhole": 32, "break": 32, "crack": 32, "fray": 32, "uneven": 32}
    rows = make_split(index, SplitConfig(seed=0))
    assert _by(rows) == {"good": 952, "blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}
    assert _by(rows, "test")["fray"] == 5 and _by(rows, "val")["fray"] == 5


# --------------------------------------------------------------------------------------------- groups
def _grouped_index(seed: int = 0) -> tuple[DatasetIndex, dict[str, str]]:
    """Parts shot 1-5 times each (``part<g>_shot<j>.png``); 'rare' has only 6 parts."""
    import random

    rnd = random.Random(seed)
    recs, group_of = [], {}
    parts = {"good": 30, "dent": 15, "scratch": 10, "rare": 6}
    g = 0
    for cls, n_parts in parts.items():
        for _ in range(n_parts):
            for j in range(rnd.randint(1, 5)):
                path = Path(f"/data/{cls}/part{g:03d}_shot{j}.png")
                recs.append(SampleRecord(path, "all", cls))
                group_of[str(path)] = f"part{g:03d}"
            g += 1
    return DatasetIndex(Path("/data"), "parts", "folder", recs), group_of


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_folds_keep_groups_whole_and_stay_stratified(seed: int) -> None:
    index, group_of = _grouped_index(seed)
    rows = make_split(index, SplitConfig(folds=5, test=0.0, seed=seed, groups=r"regex:(part\d+)_shot"))
    assert sorted(str(r.path) for r in rows) == sorted(group_of)  # every image once
    folds_of_group: dict[str, set[int]] = {}
    for r in rows:
        assert r.group == group_of[str(r.path)]
        folds_of_group.setdefault(r.group, set()).add(r.fold)  # type: ignore[arg-type]
    assert all(len(f) == 1 for f in folds_of_group.values())  # no group in two folds
    from defectlab.data.split import group_leaks

    assert group_leaks(rows) == {}
    biggest = 5  # a part has at most 5 shots: fold sizes of a class differ by at most one part
    for cls in ("good", "dent", "scratch", "rare"):
        per_fold = Counter(r.fold for r in rows if r.defect_type == cls)
        assert len(per_fold) == 5, cls  # every class in every fold
        assert max(per_fold.values()) - min(per_fold.values()) <= biggest, (cls, per_fold)
    # an ungrouped split of the same images does put shots of one part in two folds
    plain = make_split(index, SplitConfig(folds=5, test=0.0, seed=seed))
    sides: dict[str, set[int]] = {}
    for r in plain:
        sides.setdefault(group_of[str(r.path)], set()).add(r.fold)  # type: ignore[arg-type]
    assert any(len(s) > 1 for s in sides.values())


def test_grouped_holdout_keeps_groups_on_one_side(tmp_path: Path) -> None:
    index, group_of = _grouped_index()
    table = tmp_path / "groups.csv"
    table.write_text("path,class,part\n" + "".join(f"{Path(p).parent.name}/{Path(p).name},x,{g}\n"
                                                    for p, g in group_of.items()))
    rows = make_split(index, SplitConfig(val=0.2, test=0.2, groups=f"csv:{table}"))
    side = {}
    for r in rows:
        assert side.setdefault(r.group, r.split) == r.split
    for cls, n in Counter(r.defect_type for r in rows).items():
        assert 0.05 * n <= _by(rows, "test")[cls] <= 0.45 * n, cls  # about 20%, whole parts
    out = tmp_path / "m.csv"
    write_manifest(rows, out, SplitConfig(groups=f"csv:{table}"))
    from defectlab.data.split import manifest_groups

    assert manifest_groups(out) == {str(Path(p).resolve()): g for p, g in group_of.items()}
    assert read_manifest(out, check_files=False).records[0].split in ("train", "val", "test")


@pytest.mark.parametrize("rule, error, message", [
    ("regex:(part", ConfigError, "is not a regular expression"),
    ("regex:nomatch", BadInputError, "does not match the group rule"),
    ("csv:/no/such/table.csv", BadInputError, "group table not found"),
    (r"regex:(part\d+)_shot0", BadInputError, "does not match"),
])
def test_bad_group_rules_get_one_line_errors(rule: str, error: type, message: str) -> None:
    index, _ = _grouped_index()
    with pytest.raises(error, match=message) as exc:
        make_split(index, SplitConfig(folds=5, test=0.0, groups=rule))
    assert "\n" not in str(exc.value)


def test_too_few_groups_for_the_folds_is_one_line(synthetic_object: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    index, _ = _grouped_index()
    with pytest.raises(ConfigError, match="class 'rare' has 6 group"):
        make_split(index, SplitConfig(folds=7, test=0.0, groups=r"regex:(part\d+)"))
    out = str(tmp_path / "x.csv")
    assert cli_main(["data", "split", str(synthetic_object), "--out", out, "--groups", "regex:("]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a regular expression" in err[0]
