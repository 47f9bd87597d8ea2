"""The data layer: every image kind, masks, paired transforms, the dataset, bad input, the generator."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from defectlab.cli import main as cli_main
from defectlab.data import DefectDataset, PairTransform, load_image, load_mask, load_pair, open_dataset
from defectlab.data.io import read_info
from defectlab.data.synthetic import SynthConfig, make_synthetic
from defectlab.data.transforms import denormalize
from defectlab.errors import BadInputError


def _gradient(w: int, h: int) -> np.ndarray:
    """HxWx3 uint8 with distinct channels, so channel mix-ups show."""
    yy, xx = np.mgrid[0:h, 0:w]
    chans = [xx * 255 // max(1, w - 1), yy * 255 // max(1, h - 1), np.full_like(xx, 77)]
    return np.stack(chans, -1).astype(np.uint8)


def _noise() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------ image kinds

@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp"])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_formats_and_modes_load_with_their_size(tmp_path: Path, suffix: str, mode: str) -> None:
    w, h = 70, 45  # not square, not a power of two
    im = Image.fromarray(_gradient(w, h)).convert(mode)
    path = tmp_path / f"img{suffix}"
    im.save(path, quality=98) if suffix == ".jpg" else im.save(path)
    assert read_info(path) == read_info(path) and (read_info(path).width, read_info(path).height) == (w, h)
    assert read_info(path).mode == mode
    rgb = load_image(path, "RGB")
    gray = load_image(path, "L")
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
    assert gray.shape == (h, w) and gray.dtype == np.uint8
    expected = np.asarray(im.convert("RGB")).astype(int)
    tol = 6 if suffix == ".jpg" else 0
    assert np.abs(rgb.astype(int) - expected).mean() <= tol


def test_rgba_composites_on_black(tmp_path: Path) -> None:
    arr = np.zeros((20, 30, 4), np.uint8)
    arr[..., :3] = 200
    arr[:, :15, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png", "RGB")
    assert read_info(tmp_path / "a.png").channels == 4
    assert (out[:, :15] == 200).all() and (out[:, 15:] == 0).all()


def test_palette_image_maps_through_its_palette(tmp_path: Path) -> None:
    idx = np.zeros((16, 24), np.uint8)
    idx[:, 12:] = 1
    im = Image.fromarray(idx, "L").convert("P")
    im.putpalette([10, 20, 30, 250, 5, 100] + [0] * 762)
    im.putdata(idx.flatten().tolist())
    im.save(tmp_path / "p.png")
    assert read_info(tmp_path / "p.png").mode == "P"
    out = load_image(tmp_path / "p.png", "RGB")
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[0, 20]) == (250, 5, 100)


def test_16bit_grayscale_scales_the_full_range(tmp_path: Path) -> None:
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16).repeat(4, 0)
    Image.fromarray(arr).save(tmp_path / "d.png")
    assert read_info(tmp_path / "d.png").mode.startswith("I")
    out = load_image(tmp_path / "d.png", "L")
    assert out.dtype == np.uint8 and list(out[0]) == [0, 128, 255]


# ------------------------------------------------------------------------------ masks

def _square_mask(w: int = 64, h: int = 48) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[10:30, 20:50] = True
    return m


def test_jpeg_compressed_mask_is_thresholded(tmp_path: Path) -> None:
    m = _square_mask()
    Image.fromarray(m.astype(np.uint8) * 255).save(tmp_path / "m.jpg", quality=40)
    raw = np.asarray(Image.open(tmp_path / "m.jpg"))
    assert len(np.unique(raw)) > 2  # really not 0/255 any more
    got = load_mask(tmp_path / "m.jpg", size=(64, 48))
    assert got.dtype == bool and (got != m).mean() < 0.01


@pytest.mark.parametrize("fg", [1, 200])
def test_mask_values_other_than_255(tmp_path: Path, fg: int) -> None:
    m = _square_mask()
    Image.fromarray(m.astype(np.uint8) * fg).save(tmp_path / "m.png")
    assert (load_mask(tmp_path / "m.png") == m).all()


def test_rgb_and_16bit_masks(tmp_path: Path) -> None:
    m = _square_mask()
    Image.fromarray(np.stack([m.astype(np.uint8) * 255] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(m.astype(np.uint16) * 65535).save(tmp_path / "m16.png")
    assert (load_mask(tmp_path / "rgb.png") == m).all()
    assert (load_mask(tmp_path / "m16.png") == m).all()


def test_mask_of_another_size_names_the_mask(tmp_path: Path) -> None:
    Image.fromarray(_square_mask().astype(np.uint8) * 255).save(tmp_path / "m.png")
    with pytest.raises(BadInputError, match=r"m\.png: mask is 64x48 but its image is 60x48") as exc:
        load_mask(tmp_path / "m.png", size=(60, 48))
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------------------ transforms and dataset

@pytest.mark.parametrize("resize", ["squash", "letterbox", "crop"])
def test_image_and_mask_get_the_same_geometry(resize: str) -> None:
    """The image is the mask painted white: after random flips/rotations/crops they must still agree."""
    import torch

    rng = np.random.default_rng(0)
    mask = np.zeros((90, 130), bool)
    mask[5:40, 10:45] = True  # off-centre, asymmetric: any mismatched flip or rotation shows
    mask[60:85, 100:110] = True
    image = Image.fromarray(np.stack([mask.astype(np.uint8) * 255] * 3, -1))
    tf = PairTransform(64, resize=resize, augment="basic")
    for i in range(12):
        torch.manual_seed(int(rng.integers(1 << 30)) + i)
        img, msk = tf(image, mask)
        assert img.shape == (3, 64, 64) and msk.shape == (1, 64, 64)
        assert set(torch.unique(msk).tolist()) <= {0.0, 1.0}
        bright = denormalize(img)[..., 0] > 127
        m = msk[0].numpy() > 0.5
        # interpolation differs near the boundary (bilinear image, nearest mask, resampled twice); away
        # from it they agree (a mismatched flip or rotation gets ~1000 of 4096 pixels wrong)
        band = ndimage.binary_dilation(m, iterations=2) & ~ndimage.binary_erosion(m, iterations=2)
        wrong = (bright != m) & ~band
        assert wrong.mean() < 0.002, f"draw {i}: image and mask disagree on {100 * wrong.mean():.1f}%"
        assert (bright & m).sum() > 0.8 * m.sum()


def test_flip_moves_image_and_mask_together() -> None:
    import torch
    from torchvision.transforms import v2

    mask = np.zeros((32, 32), bool)
    mask[:, :8] = True
    image = Image.fromarray(np.stack([mask.astype(np.uint8) * 255] * 3, -1))
    tf = PairTransform(32)
    tf._geometry = v2.Compose([v2.RandomHorizontalFlip(p=1.0)])  # deterministic flip
    img, msk = tf(image, mask)
    assert msk[0, :, -8:].all() and not msk[0, :, :-8].any()
    assert (denormalize(img)[:, -8:, 0] > 127).all() and (denormalize(img)[:, :-8, 0] < 128).all()
    assert torch.is_tensor(img)


def test_dataset_good_images_get_all_zero_masks(synthetic_object: Path) -> None:
    index = open_dataset(synthetic_object)
    good = index.select(split="train")[:2]
    bad = index.select(split="test", defect_types=["hole"])[:2]
    ds = DefectDataset(good + bad, PairTransform(64))
    samples = [ds[i] for i in range(len(ds))]
    assert [s.label for s in samples] == [0, 0, 1, 1]
    assert all(s.mask.sum() == 0 for s in samples[:2]) and all(s.mask.sum() > 0 for s in samples[2:])
    assert samples[0].image.shape == (3, 64, 64) and samples[0].path == str(good[0].path)
    classed = DefectDataset(bad, PairTransform(64), class_to_idx={c: i for i, c in enumerate(index.classes)})
    assert classed[0].label == index.classes.index("hole")


def test_grayscale_dataset_loads_as_three_channels(synthetic_texture_gray: Path) -> None:
    index = open_dataset(synthetic_texture_gray)
    rec = index.select(split="test", defect_types=["crack"])[0]
    image, mask = load_pair(rec)
    assert image.mode == "RGB" and mask.shape == (image.height, image.width) and mask.any()


# ------------------------------------------------------------------------------ bad input

def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _one_line(exc: pytest.ExceptionInfo[BadInputError], name: str) -> None:
    text = str(exc.value)
    assert "\n" not in text and name in text, text


def test_truncated_image(tmp_path: Path) -> None:
    path = tmp_path / "t.png"
    Image.fromarray(_noise()).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BadInputError, match="truncated|cannot decode") as exc:
        load_image(path)
    _one_line(exc, "t.png")


def test_truncated_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "t.jpg"
    Image.fromarray(_noise()).save(path, quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BadInputError) as exc:
        load_image(path)
    _one_line(exc, "t.jpg")


def test_non_image_file_with_image_suffix(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    for fn in (read_info, load_image, load_mask):
        with pytest.raises(BadInputError, match="not an image") as exc:
            fn(path)
        _one_line(exc, "notes.jpg")


def test_empty_folder_and_unknown_layout(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="empty folder") as exc:
        open_dataset(tmp_path / "empty")
    _one_line(exc, "empty")
    (tmp_path / "odd" / "stuff").mkdir(parents=True)
    with pytest.raises(BadInputError, match="unknown layout") as exc:
        open_dataset(tmp_path / "odd")
    _one_line(exc, "odd")
    (tmp_path / "nogood" / "good").mkdir(parents=True)
    with pytest.raises(BadInputError, match="no images found"):
        open_dataset(tmp_path / "nogood")


def test_defect_image_without_mask_strict_and_lenient(
    synthetic_object: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cat = _copy(synthetic_object, tmp_path / "cat")
    (cat / "ground_truth" / "crack" / "002_mask.png").unlink()
    with pytest.raises(BadInputError, match="defect image has no mask") as exc:
        open_dataset(cat)
    _one_line(exc, str(cat / "test" / "crack" / "002.png"))
    index = open_dataset(cat, lenient=True)
    assert [p.name for p, _ in index.skipped] == ["002.png"]
    assert "has no mask" in caplog.text and "skipped" in caplog.text
    assert index.counts()["test"]["crack"] == 5


def test_mask_of_another_size_in_a_dataset(synthetic_object: Path, tmp_path: Path) -> None:
    cat = _copy(synthetic_object, tmp_path / "cat")
    bad = cat / "ground_truth" / "hole" / "001_mask.png"
    Image.new("L", (100, 128)).save(bad)
    rec = next(r for r in open_dataset(cat).records if r.mask_path == bad)
    with pytest.raises(BadInputError, match="mask is 100x128 but its image is 128x128") as exc:
        load_pair(rec)
    _one_line(exc, "001_mask.png")


def test_cli_prints_one_error_line_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ds" / "good").mkdir(parents=True)
    (tmp_path / "ds" / "good" / "a.png").write_text("not a png")
    code = cli_main(["data", "describe", str(tmp_path / "ds")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == f"error: {tmp_path / 'ds' / 'good' / 'a.png'}: not an image (unrecognised file format)"


def test_console_script_error_has_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "defectlab", "data", "describe", str(tmp_path / "empty")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'empty'}: empty folder"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# ------------------------------------------------------------------------------ generator

def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("kind,fmt,gray", [("texture", "png", False), ("object", "jpg", True)])
def test_generator_is_deterministic_per_seed(tmp_path: Path, kind: str, fmt: str, gray: bool) -> None:
    cfg = SynthConfig(kind=kind, grayscale=gray, size=64, n_train=2, n_test_good=1, n_per_defect=1,
                      image_format=fmt, seed=3)
    a = make_synthetic(tmp_path / "a", cfg)
    b = make_synthetic(tmp_path / "b", cfg)
    c = make_synthetic(tmp_path / "c", SynthConfig(**{**cfg.__dict__, "seed": 4}))
    assert _files(a) == _files(b) == _files(c) and len(_files(a)) == 2 + 1 + 4 * 2
    assert all(filecmp.cmp(a / f, b / f, shallow=False) for f in _files(a))
    assert not any(filecmp.cmp(a / f, c / f, shallow=False) for f in _files(a))
    index = open_dataset(a)
    assert index.counts() == {"test": {"contamination": 1, "crack": 1, "good": 1, "hole": 1, "scratch": 1},
                              "train": {"good": 2}}
    assert read_info(index.records[0].path).mode == ("L" if gray else "RGB")
