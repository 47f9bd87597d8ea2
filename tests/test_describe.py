"""``defectlab data describe``: counts, sizes, modes, coverage and imbalance on data with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectlab.cli import main as cli_main
from defectlab.data.describe import SCHEMA_VERSION, describe_index, describe_path
from defectlab.data.index import open_dataset
from defectlab.data.io import load_mask
from defectlab.data.synthetic import SynthConfig, make_synthetic, make_synthetic_root
from defectlab.errors import BadInputError
from tests.conftest import shared_dataset


def test_synthetic_counts_sizes_coverage_and_imbalance(synthetic_object: Path) -> None:
    rep = describe_index(open_dataset(synthetic_object))
    assert rep["schema_version"] == SCHEMA_VERSION and rep["kind"] == "dataset"
    assert rep["classes"] == ["good", "contamination", "crack", "hole", "scratch"]
    assert rep["num_defect_classes"] == 4 and rep["num_images"] == 24 + 8 + 4 * 6
    assert rep["splits"] == {"train": {"good": 24},
                             "test": {"good": 8, "contamination": 6, "crack": 6, "hole": 6, "scratch": 6}}
    assert rep["split_totals"]["test"] == {"images": 32, "good": 8, "defect": 24}
    assert rep["per_class"]["good"] == {"total": 32, "train": 24, "test": 8}
    assert rep["per_class"]["hole"] == {"total": 6, "train": 0, "test": 6}
    size = rep["image_size"]
    assert size["width"] == {"min": 128, "median": 128, "mean": 128, "max": 128}
    assert size["most_common"] == [{"width": 128, "height": 128, "count": 56}] and size["distinct_sizes"] == 1
    assert size["aspect_ratio"]["median"] == 1 and size["aspect_ratio"]["square_images"] == 56
    assert rep["modes"] == {"RGB": 56} and rep["channels"] == {"3": 56} and rep["formats"] == {"png": 56}
    # coverage by hand for one class
    mask_files = sorted((synthetic_object / "ground_truth" / "hole").glob("*.png"))
    holes = [100 * load_mask(p).mean() for p in mask_files]
    cov = rep["mask_coverage"]["hole"]
    assert cov["masks"] == 6 and cov["empty_masks"] == 0
    assert cov["mean"] == pytest.approx(np.mean(holes), abs=1e-3)
    assert cov["min"] == pytest.approx(min(holes), abs=1e-3)
    assert cov["max"] == pytest.approx(max(holes), abs=1e-3)
    assert set(rep["mask_coverage"]) == {"contamination", "crack", "hole", "scratch"}
    assert rep["imbalance"]["all_classes"] == {"ratio": pytest.approx(32 / 6, abs=1e-4),
                                               "largest": {"class": "good", "count": 32},
                                               "smallest": {"class": "contamination", "count": 6}}
    assert rep["imbalance"]["defect_classes"]["ratio"] == 1.0
    assert rep["images_without_masks"] == {"good": 32, "defect": 0, "defect_by_class": {}}


def test_cli_writes_report_files(synthetic_texture_gray: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert cli_main(["data", "describe", str(synthetic_texture_gray), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "synthetic_texture_gray" in printed and "crack" in printed and "L 56" in printed
    assert sorted(p.name for p in out.iterdir()) == ["class_distribution.png", "report.json", "report.md",
                                                      "samples.png"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["modes"] == {"L": 56} and rep["splits"]["train"] == {"good": 24}
    md = (out / "report.md").read_text()
    assert "| crack | 0 | 6 | 6 | 6 | 0 |" in md and "samples.png" in md
    for name in ("class_distribution.png", "samples.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200
    with Image.open(out / "samples.png") as im:  # red outlines are drawn on the (grey) samples
        arr = np.asarray(im.convert("RGB")).astype(int)
    assert ((arr[..., 0] > 200) & (arr[..., 1] < 60) & (arr[..., 2] < 60)).sum() > 50


def _save(path: Path, arr: np.ndarray, mode: str | None = None, **kw: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    im.save(path, **kw)


def _mixed_folder(root: Path) -> Path:
    """good/ and dent/ with PNG/JPEG/BMP, RGB/L/RGBA/P/16-bit, different sizes, odd masks."""
    rng = np.random.default_rng(0)
    def rgb(h: int, w: int) -> np.ndarray:
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    _save(root / "good" / "a.png", rgb(40, 60))
    _save(root / "good" / "b.jpg", rgb(50, 50), "L", quality=90)
    _save(root / "good" / "c.bmp", rgb(30, 90))
    _save(root / "dent" / "d.png", rgb(40, 40), "RGBA")
    _save(root / "dent" / "e.png", rgb(40, 80), "P")
    Image.fromarray(rng.integers(0, 65535, (64, 32), dtype=np.uint16)).save(root / "dent" / "f.png")
    _save(root / "dent" / "g.png", rgb(40, 40))  # no mask
    m = np.zeros((40, 40), np.uint8)
    m[:10, :20] = 1  # a 0/1 mask: 12.5 %
    _save(root / "dent" / "d_mask.png", m)
    m = np.zeros((40, 80), np.uint8)
    m[:, :20] = 255  # JPEG-compressed mask: ~25 %
    _save(root / "dent" / "e_mask.jpg", m, quality=60)
    m = np.zeros((64, 32), np.uint8)
    _save(root / "dent" / "f_mask.png", m)  # empty
    return root


def test_folder_layout_with_every_image_kind(tmp_path: Path) -> None:
    rep, _ = describe_path(_mixed_folder(tmp_path / "mixed"))
    assert rep["dataset"]["layout"] == "folder" and rep["splits"] == {"all": {"good": 3, "dent": 4}}
    assert rep["modes"] == {"RGB": 3, "L": 1, "RGBA": 1, "P": 1, "I;16": 1}
    assert rep["channels"] == {"1": 3, "3": 3, "4": 1}
    assert rep["formats"] == {"png": 5, "jpg": 1, "bmp": 1}
    widths = sorted([60, 50, 90, 40, 80, 32, 40])
    heights = sorted([40, 50, 30, 40, 40, 64, 40])
    assert rep["image_size"]["width"]["min"] == 32 and rep["image_size"]["width"]["max"] == 90
    assert rep["image_size"]["width"]["median"] == np.median(widths)
    assert rep["image_size"]["height"]["median"] == np.median(heights)
    assert rep["image_size"]["most_common"][0] == {"width": 40, "height": 40, "count": 2}
    assert rep["image_size"]["aspect_ratio"]["max"] == 3.0 and rep["image_size"]["aspect_ratio"]["min"] == 0.5
    cov = rep["mask_coverage"]["dent"]
    assert cov["masks"] == 3 and cov["empty_masks"] == 1 and cov["min"] == 0.0
    assert cov["max"] == pytest.approx(25.0, abs=1.5) and cov["median"] == pytest.approx(12.5, abs=1e-6)
    assert rep["images_without_masks"] == {"good": 3, "defect": 1, "defect_by_class": {"dent": 1}}
    assert rep["imbalance"]["all_classes"]["largest"] == {"class": "dent", "count": 4}


def test_root_of_several_categories(tmp_path: Path) -> None:
    make_synthetic_root(tmp_path / "root", size=48, n_train=3, n_test_good=2, n_per_defect=1)
    out = tmp_path / "out"
    rep, _ = describe_path(tmp_path / "root")
    assert rep["kind"] == "root" and sorted(rep["categories"]) == ["synthetic_object", "synthetic_texture"]
    assert [row["images"] for row in rep["summary"]] == [9, 9]
    assert rep["summary"][0]["train"] == 3 and rep["summary"][0]["test"] == 6
    assert cli_main(["data", "describe", str(tmp_path / "root"), "--out", str(out)]) == 0
    assert (out / "report.json").is_file() and (out / "synthetic_object" / "samples.png").is_file()
    assert json.loads((out / "synthetic_texture" / "report.json").read_text())["num_images"] == 9


@pytest.fixture()
def small_category(tmp_path: Path) -> Path:
    return make_synthetic(tmp_path, SynthConfig(size=48, n_train=3, n_test_good=1, n_per_defect=2, seed=5))


def test_bad_mask_size_strict_and_lenient(small_category: Path, tmp_path: Path) -> None:
    bad = small_category / "ground_truth" / "hole" / "001_mask.png"
    Image.new("L", (20, 48)).save(bad)
    with pytest.raises(BadInputError, match="mask is 20x48 but its image is 48x48") as exc:
        describe_path(small_category)
    assert "001_mask.png" in str(exc.value)
    rep, _ = describe_path(small_category, lenient=True)
    assert rep["skipped"] == [{"path": str(bad), "problem": "mask is 20x48 but its image is 48x48"}]
    assert rep["mask_coverage"]["hole"]["masks"] == 1
    assert cli_main(["data", "describe", str(small_category), "--lenient", "--out", str(tmp_path / "o")]) == 0


def test_non_image_and_truncated_files(small_category: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = small_category / "train" / "good" / "junk.png"
    junk.write_text("hello")
    assert cli_main(["data", "describe", str(small_category)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {junk}: not an image (unrecognised file format)"
    rep, _ = describe_path(small_category, lenient=True)
    assert rep["num_images"] == 3 + 1 + 4 * 2 and len(rep["skipped"]) == 1
    junk.unlink()
    trunc = small_category / "train" / "good" / "000.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(trunc)
    trunc.write_bytes(trunc.read_bytes()[:5000])
    describe_path(small_category)  # a header read does not notice truncation ...
    with pytest.raises(BadInputError, match="truncated"):  # ... --verify decodes every image
        describe_path(small_category, verify=True)


def test_defect_without_mask_lenient_is_reported(small_category: Path) -> None:
    (small_category / "ground_truth" / "crack" / "000_mask.png").unlink()
    with pytest.raises(BadInputError, match="defect image has no mask"):
        describe_path(small_category)
    rep, _ = describe_path(small_category, lenient=True)
    assert rep["per_class"]["crack"]["total"] == 1 and rep["skipped"][0]["path"].endswith("crack/000.png")


def test_magnetic_tile_exact_counts(tmp_path: Path) -> None:
    path = shared_dataset("magnetic_tile")
    rep = describe_index(open_dataset(path))
    assert rep["splits"] == {"train": {"good": 715},
                             "test": {"good": 237, "blowhole": 115, "break": 85, "crack": 57, "fray": 32,
                                      "uneven": 103}}
    assert rep["num_images"] == 1344 and rep["num_defect_classes"] == 5
    assert rep["modes"] == {"L": 1344} and rep["formats"] == {"jpg": 1344}
    assert 95 <= rep["image_size"]["width"]["min"] <= 110 and 600 <= rep["image_size"]["width"]["max"] <= 640
    assert sum(c["masks"] for c in rep["mask_coverage"].values()) == 392
    assert rep["imbalance"]["all_classes"]["smallest"] == {"class": "fray", "count": 32}
    assert rep["imbalance"]["all_classes"]["ratio"] == pytest.approx(952 / 32, abs=1e-3)


def test_report_shows_groups_and_warns_when_a_split_leaks_them(synthetic_object: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    from defectlab.data.split import SplitConfig, make_split, write_manifest

    rule = r"regex:^(\d\d)"  # images 000-009 of every class are part 00, 010-019 part 01, ...
    index = open_dataset(synthetic_object)
    grouped = tmp_path / "grouped.csv"
    write_manifest(make_split(index, SplitConfig(folds=2, test=0.0, groups=rule)), grouped, SplitConfig())
    plain = tmp_path / "plain.csv"
    write_manifest(make_split(index, SplitConfig(folds=2, test=0.0)), plain, SplitConfig())
    with caplog.at_level("WARNING"):
        rep, _ = describe_path(grouped)
    assert rep["groups"]["rule"] == "manifest group column" and rep["groups"]["leaked_groups"] == 0
    assert rep["groups"]["groups"] == len({r.path.name[:2] for r in index.records})  # keys span classes
    assert not any("two sides" in m for m in caplog.messages)
    rep, _ = describe_path(plain, groups=rule)
    assert rep["groups"]["leaked_groups"] > 0 and any("two sides" in m for m in caplog.messages)
    assert cli_main(["data", "describe", str(plain), "--groups", rule, "--out", str(tmp_path / "r")]) == 0
    assert "WARNING: split leaks groups" in (tmp_path / "r" / "report.md").read_text()
    assert cli_main(["data", "describe", str(plain), "--groups", "regex:("]) == 2
