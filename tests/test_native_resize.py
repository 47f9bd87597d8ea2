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
from defectlab.anomaly.runner import RunConfig, evaluate, evaluation_records, fit_detector, resolve_resize
from defectlab.data.index import open_dataset
from defectlab.errors import BadInputError, ConfigError
from defectlab.export.onnx import export_onnx
from defectlab.inspect.onnx_engine import OnnxDetector

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
    for a, b, c in zip(batched, single, onnx, strict=True):
        assert a.score == pytest.approx(b.score, rel=1e-5)
        assert c.score == pytest.approx(a.score, rel=1e-5)
        np.testing.assert_allclose(c.anomaly_map, a.anomaly_map, rtol=1e-5, atol=1e-4)
    assert len({p.anomaly_map.shape for p in batched}) == 3


def test_engines_agree_on_tiny_images(native_run: Path, tmp_path: Path) -> None:
    """Both engines share ``min_input_side`` (the blur window): the same images refused, the same accepted."""
    onnx, det = OnnxDetector.load(native_run), Detector.load(native_run)
    assert onnx.min_input_side == det.min_input_side == 33
    with pytest.raises(ConfigError, match="too small for the ONNX scorer"):
        onnx.predict_array(np.zeros((1, 3, 30, 64), dtype=np.float32))
    tiny = tmp_path / "tiny.png"  # 40 px at the run's scale 0.5: 20 px, under the blur's 33
    Image.new("RGB", (40, 40), (90, 90, 90)).save(tiny)
    for engine in (onnx, det):
        with pytest.raises(BadInputError, match=r"tiny\.png: image too small: 40x40 px, 20x20 for the model"):
            engine.predict_images([tiny])
        with pytest.raises(BadInputError, match="image too small: 1x1 px"):
            engine.predict_images([Image.new("RGB", (1, 1))])
    # 33x40 for the model: both take it, same score (textured: a flat image's standardisation divides
    # rounding noise by ~1e-6, which no two implementations share)
    edge = Image.fromarray(np.random.default_rng(0).integers(60, 120, (80, 66, 3), dtype=np.uint8), "RGB")
    a, b = det.predict_images([edge])[0], onnx.predict_images([edge])[0]
    assert a.score == pytest.approx(b.score, rel=1e-3, abs=1e-4)


def test_model_pixel_budget_follows_the_scale(native_run: Path, tmp_path: Path) -> None:
    """The accepted file size follows from the run's scale (0.5 here): refused by the model limit from the
    header alone, in both engines; a file over the limit but reducible is decoded small and scored."""
    onnx, det = OnnxDetector.load(native_run), Detector.load(native_run)
    budget = det.model_pixel_budget
    assert budget == 4 * 64 * 64 and onnx.model_pixel_budget == budget
    side = int((budget ** 0.5) / 0.5)  # 256 px: 128 x 128 for the model, exactly the budget
    ok, over = tmp_path / "ok.png", tmp_path / "over.png"
    Image.new("RGB", (side, side), (90, 90, 90)).save(ok)
    Image.new("RGB", (side + 2, side + 2), (90, 90, 90)).save(over)
    for engine in (det, onnx):
        assert len(engine.predict_images([ok])) == 1
        with pytest.raises(BadInputError, match=r"too large for this model: 258x258 px, 129x129 for the model"):
            engine.predict_images([over])
    det.max_model_pixels = 4 * budget  # a larger budget: accepted; 66,564 file px > 65,536: reduced on load
    pred = det.predict_images([over])[0]
    assert pred.anomaly_map.shape == (129, 129) and pred.extra["source_size"] == (258, 258)
    det.max_model_pixels = 16 * budget  # within the budget: decoded as is, as in training
    assert det.predict_images([over])[0].anomaly_map.shape == (258, 258)
