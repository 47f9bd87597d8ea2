"""PatchCore's default input, ``native`` (one scale factor, sizes vary): the default per method, batches of
equal sizes, maps at every image's own size, and an ONNX export that takes any input size."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectlab.anomaly import build_model
from defectlab.anomaly.detector import Detector, same_size_runs
from defectlab.anomaly.runner import RunConfig, evaluation_records, evaluate, fit_detector, resolve_resize
from defectlab.data.index import open_dataset
from defectlab.errors import BadInputError, ConfigError
from defectlab.export.onnx import OnnxDetector, export_onnx

SIZES = [(128, 128), (96, 128), (128, 80)]  # (width, height) given to every third image


@pytest.fixture(scope="module")
def mixed(synthetic_object: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``synthetic_object`` with images (and their masks) in three sizes, interleaved."""
    root = tmp_path_factory.mktemp("mixed") / "object"
    shutil.copytree(synthetic_object, root)
    for folder in ("train", "test"):
        for i, path in enumerate(sorted((root / folder).rglob("*.png"))):
            size = SIZES[i % 3]
            Image.open(path).resize(size, Image.BILINEAR).save(path)
            mask = root / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
            if mask.exists():
                Image.open(mask).resize(size, Image.NEAREST).save(mask)
    return root


@pytest.fixture(scope="module")
def native_run(mixed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("native_run")
    # resize "auto": native for PatchCore; single images held out ("auto" groups these look-alike objects by
    # size, and a whole size group held out would change the median side the scale comes from)
    cfg = RunConfig(data=str(mixed), model="patchcore", image_size=64, holdout=0.25, batch_size=4,
                    holdout_group="none", options={"coreset_ratio": 0.1})
    fit_detector(cfg).save(run)
    export_onnx(run)
    return run


def test_auto_resize_is_native_for_patchcore_and_letterbox_for_fixed_grids() -> None:
    assert resolve_resize("auto", build_model("patchcore", {"weights": "none"})) == "native"
    assert resolve_resize("auto", build_model("padim", {"weights": "none"})) == "letterbox"
    with pytest.raises(ConfigError, match="one input size"):
        resolve_resize("native", build_model("padim", {"weights": "none"}))
    with pytest.raises(ConfigError, match="known: auto, native"):
        resolve_resize("stretch", build_model("patchcore", {"weights": "none"}))


def test_same_size_runs_keep_order_and_cut_at_size_changes() -> None:
    sizes = ["a", "a", "a", "b", "a", "a", "c"]
    assert same_size_runs(sizes, 2) == [[0, 1], [2], [3], [4, 5], [6]]
    assert same_size_runs([], 4) == []


def test_native_run_maps_at_each_size_and_separates_defects(native_run: Path, mixed: Path) -> None:
    det = Detector.load(native_run)
    assert det.preprocess.resize == "native" and det.preprocess.scale == pytest.approx(0.5)  # median side 128
    result = evaluate(det, evaluation_records(open_dataset(mixed)), batch_size=4, keep=set(range(40)))
    assert result.metrics["all"]["image_auroc"] >= 0.9
    for i, amap in result.maps.items():
        assert amap.shape == result.masks[i].shape  # every map at its own image's size
    assert {m.shape for m in result.maps.values()} == {(h, w) for w, h in SIZES}


def test_batched_equals_one_by_one_and_onnx_equals_torch_at_every_size(native_run: Path, mixed: Path) -> None:
    paths = sorted((mixed / "test").rglob("*.png"))[:9]
    det = Detector.load(native_run)
    batched = det.predict_images(paths, batch_size=9)
    single = [det.predict_images([p], batch_size=1)[0] for p in paths]
    onnx = OnnxDetector.load(native_run).predict_images(paths, batch_size=9)
    for a, b, c in zip(batched, single, onnx):
        assert a.score == pytest.approx(b.score, rel=1e-5)
        assert c.score == pytest.approx(a.score, rel=1e-5)
        np.testing.assert_allclose(c.anomaly_map, a.anomaly_map, rtol=1e-5, atol=1e-4)
    assert len({p.anomaly_map.shape for p in batched}) == 3


def test_onnx_refuses_an_input_smaller_than_its_smoothing_window(native_run: Path, tmp_path: Path) -> None:
    import torch

    onnx = OnnxDetector.load(native_run)
    with pytest.raises(ConfigError, match="too small for the ONNX scorer"):
        onnx.predict_tensor(torch.zeros(1, 3, 30, 64))
    tiny = tmp_path / "tiny.png"  # 40 px at the run's scale 0.5: 20 px, under the blur's 33
    Image.new("RGB", (40, 40), (90, 90, 90)).save(tiny)
    with pytest.raises(BadInputError, match=r"tiny\.png: 20x20 px after preprocessing, less than the 33 px"):
        onnx.predict_images([tiny])
    assert len(Detector.load(native_run).predict_images([tiny])) == 1  # the torch engine takes it
