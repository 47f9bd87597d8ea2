"""Region-pooled classification (``train.input: pooled``): features averaged over the defect mask, a probe
on them, the checkpoint through ``Predictor``, and ``decide`` classifying each region with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torchvision.transforms import v2

from defectlab.classify.data import cache_images
from defectlab.classify.experiment import load_experiment, resolve_attempts, run_experiment
from defectlab.classify.models import ModelConfig, build_classifier
from defectlab.classify.pooled import make_pooled, patch_layer, pooled_input
from defectlab.classify.predict import Predictor, pick_checkpoint
from defectlab.classify.probe import ProbeFitter
from defectlab.classify.train import TrainConfig, build_setup, check_config, predict_logits
from defectlab.data.index import open_dataset
from defectlab.data.io import load_mask, load_pil
from defectlab.data.regions import mask_box
from defectlab.data.synthetic import SynthConfig, make_synthetic
from defectlab.errors import ConfigError
from defectlab.verdict.rule import decide


def test_pooled_features_are_the_layer_mean_inside_the_mask() -> None:
    torch.manual_seed(0)
    clf = build_classifier(ModelConfig("mobilenet_v2", weights="imagenet"), num_classes=2, image_size=64)
    assert patch_layer("mobilenet_v2") == "features.13"  # stride 16, 96 channels
    seen = {}
    layer = dict(clf.body.named_modules())["features.13"]
    hook = layer.register_forward_hook(lambda m, i, o: seen.update(f=o))
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        clf.body.eval()(image)
    hook.remove()
    fmap = seen["f"]
    assert fmap.shape[1:] == (96, 4, 4)
    make_pooled(clf, "mobilenet_v2", 64)
    assert clf.num_features == 96 and clf.head[-1].in_features == 96
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, 16:48, 0:32] = 1.0  # feature cells rows 1-2, columns 0-1; image 1: no region
    with torch.no_grad():
        pooled = clf.eval().forward_features(torch.cat([image, mask], 1))
    torch.testing.assert_close(pooled[0], fmap[0, :, 1:3, 0:2].mean((1, 2)))
    torch.testing.assert_close(pooled[1], fmap[1].mean((1, 2)))  # empty mask: the plain average
    # a soft mask weighs the cells: half weight on one cell, full on another
    soft = torch.zeros(1, 1, 64, 64)
    soft[0, :, 0:16, 0:16], soft[0, :, 48:64, 48:64] = 0.5, 1.0
    with torch.no_grad():
        got = clf.forward_features(torch.cat([image[:1], soft], 1))[0]
    torch.testing.assert_close(got, (0.5 * fmap[0, :, 0, 0] + fmap[0, :, 3, 3]) / 1.5)


def test_pooled_input_moves_the_mask_with_the_image() -> None:
    image = torch.zeros(3, 60, 120, dtype=torch.uint8)
    image[:, 30:60, 60:120] = 200
    x = pooled_input(image, np.asarray(image[0] > 0), 32, "squash")
    assert x.shape == (4, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x[3] > 127, x[0] > 100)  # the mask channel covers the bright quarter, resized alike
    assert pooled_input(image, None, 32)[3].max() == 0


def test_pooled_without_a_probe_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="probe") as err:
        check_config(TrainConfig(input="pooled"))
    assert "\n" not in str(err.value)
    check_config(TrainConfig(input="pooled", probe="prototype"))
    exp = tmp_path / "exp.yaml"
    attempt = {"name": "a", "train": {"input": "pooled", "probe": "linear"}}
    exp.write_text(yaml.safe_dump({"data": {"dataset": str(tmp_path)},
                                   "base": {"model": {"name": "simple_cnn"}}, "attempts": [attempt]}))
    with pytest.raises(ConfigError, match="simple_cnn.*patch layers|patch layers.*simple_cnn") as err:
        resolve_attempts(load_experiment(exp))
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def two_types(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 px objects with small holes or scratches, 12 images each (masks)."""
    return make_synthetic(tmp_path_factory.mktemp("pooled"), SynthConfig(
        kind="object", size=96, n_train=2, n_test_good=2, n_per_defect=12, defects=("hole", "scratch"),
        seed=3))


def test_pooled_probes_separate_two_types(two_types: Path, tmp_path: Path, one_torch_thread) -> None:
    cfg = {"name": "pooled", "data": {"dataset": str(two_types), "classes": ["hole", "scratch"],
                                      "split": {"folds": 3, "test": 0.0, "use_train_good": False, "seed": 0,
                                                "classes": ["hole", "scratch"]}},
           "base": {"model": {"name": "mobilenet_v2", "weights": "imagenet"},
                    "train": {"image_size": 96, "input": "pooled", "tta": "flips"}},
           "attempts": [{"name": "linear", "train": {"probe": "linear"}},
                        {"name": "prototype", "train": {"probe": "prototype"}}]}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    rows = run_experiment(load_experiment(tmp_path / "exp.yaml"), tmp_path / "run", progress=False)
    for row in rows:
        assert row["epochs_run"] == 1 and not row["collapsed"]
        assert row["balanced_acc"] >= 0.85, (row["attempt"], row["balanced_acc"])


def test_saved_pooled_probe_predicts_the_same_through_predictor(two_types: Path, tmp_path: Path,
                                                                one_torch_thread) -> None:
    index = open_dataset(two_types)
    recs = sorted((r for r in index.records if r.defect_type in ("hole", "scratch")),
                  key=lambda r: str(r.path))
    c2i = {"hole": 0, "scratch": 1}
    train_cfg = TrainConfig(image_size=96, input="pooled", probe="linear", tta="flips")
    train = cache_images(recs[::2], c2i, size=96, input="pooled")
    test = cache_images(recs[1::2], c2i, size=96, input="pooled")
    fitted = ProbeFitter(ModelConfig("mobilenet_v2", weights="imagenet"), train_cfg, ["hole", "scratch"],
                         tmp_path / "a", progress=False).fit(train, test)
    want = predict_logits(fitted.setup_, test.images, batch_size=16, device=torch.device("cpu")).softmax(1)
    pred = Predictor(tmp_path / "a" / "best.pt", device="cpu")
    assert pred.region_guided
    for i, rec in enumerate(recs[1::2]):
        mask = load_mask(rec.mask_path)
        got = pred.predict_regions(rec.path, [mask_box(mask)], [mask])[0]
        expect = dict(zip(["hole", "scratch"], want[i].tolist(), strict=True))
        assert got.probabilities == pytest.approx(expect, abs=1e-5)
    # several regions of one image in one call (one backbone pass) = one call per region
    rec = recs[1]
    mask = load_mask(rec.mask_path)
    h, w = mask.shape
    parts = [mask.copy(), np.zeros_like(mask), np.ones_like(mask)]
    parts[1][: h // 2, : w // 2] = True
    batch = pred.predict_regions(rec.path, [None] * 3, parts)
    for one, part in zip(batch, parts, strict=True):
        alone = pred.predict_regions(rec.path, [None], [part])[0]
        assert one.probabilities == pytest.approx(alone.probabilities, abs=1e-5)
    assert batch[0].probabilities != pytest.approx(batch[1].probabilities, abs=1e-3)
    # without a mask the box is the region; without a box the whole image (the plain average)
    mask = load_mask(rec.mask_path)
    box_only = pred.predict([rec.path], boxes=[mask_box(mask)])[0].probabilities
    by_mask = pred.predict_regions(rec.path, [mask_box(mask)], [None])[0].probabilities
    assert box_only == pytest.approx(by_mask)
    whole = pred.predict([rec.path])[0].probabilities
    setup = build_setup(ModelConfig("mobilenet_v2", weights="checkpoint"), train_cfg, ["hole", "scratch"],
                        [1, 1])
    setup.model.load_state_dict(torch.load(tmp_path / "a" / "best.pt", weights_only=True)["model"])
    plain = pooled_input(v2.functional.pil_to_tensor(load_pil(rec.path, "RGB")), None, 96)[None]
    expect = predict_logits(setup, plain, batch_size=1, device=torch.device("cpu")).softmax(1)[0].tolist()
    assert list(whole.values()) == pytest.approx(expect, abs=1e-5)


def test_classify_predict_cli_takes_masks(two_types: Path, tmp_path: Path, capsys, one_torch_thread) -> None:
    """``classify predict --masks DIR`` pools a region-pooled attempt over each image's ``<stem>_mask.png``."""
    from defectlab.cli import main

    recs = sorted((r for r in open_dataset(two_types).records if r.defect_type in ("hole", "scratch")),
                  key=lambda r: str(r.path))
    cfg = TrainConfig(image_size=96, input="pooled", probe="linear")
    train = cache_images(recs, {"hole": 0, "scratch": 1}, size=96, input="pooled")
    ProbeFitter(ModelConfig("mobilenet_v2", weights="imagenet"), cfg, ["hole", "scratch"], tmp_path / "a",
                progress=False).fit(train, train)
    ckpt, files = tmp_path / "a" / "best.pt", [str(r.path) for r in recs[:4]]
    assert main(["classify", "predict", str(ckpt), *files, "--masks", str(two_types / "ground_truth")]) == 0
    lines = [ln.split("\t") for ln in capsys.readouterr().out.splitlines() if not ln.startswith("#")]
    pred = Predictor(ckpt, device="cpu")
    for (path, label, prob), rec in zip(lines, recs[:4], strict=True):
        mask = load_mask(rec.mask_path)
        want = pred.predict_regions(rec.path, [mask_box(mask)], [mask])[0]
        assert (path, label) == (str(rec.path), want.label) and float(prob) == pytest.approx(want.probability, abs=1e-3)
    assert main(["classify", "predict", str(ckpt), files[0], "--masks", str(tmp_path / "nowhere")]) == 2


def test_decide_classifies_each_region_with_a_region_guided_classifier() -> None:
    amap = np.zeros((40, 60), np.float32)
    amap[2:12, 2:22] = 1.0   # the larger region (200 px): left
    amap[30:36, 50:56] = 1.0  # the smaller one (36 px): bottom right
    calls = []

    def region_probs(regions: list) -> list[dict[str, float]]:
        calls.extend((box, mask.copy()) for box, mask in regions)
        return [{"good": 0.2, "hole": 0.7 if box[0] < 30 else 0.1, "scratch": 0.1 if box[0] < 30 else 0.7}
                for box, _ in regions]

    common = dict(anomaly_score=1.0, anomaly_threshold=0.5, anomaly_map=amap, pixel_threshold=0.5,
                  classes=["hole", "scratch"])
    v = decide(**common, region_probs=region_probs)
    assert [r.type for r in v.regions] == ["hole", "scratch"] and v.type == "hole"
    assert [c[0] for c in calls] == [(2, 2, 22, 12), (50, 30, 56, 36)] and calls[0][1].all()
    assert v.regions[1].probabilities["scratch"] == pytest.approx(0.7 / 0.8)  # good left out, renormalised
    # a whole-image classifier: the same image-level probabilities for every region
    v = decide(**common, classifier_probs={"hole": 0.1, "scratch": 0.9})
    assert [r.type for r in v.regions] == ["scratch", "scratch"]
    # a gate without any region: the region-guided classifier sees the whole image
    calls.clear()
    v = decide(**{**common, "pixel_threshold": 2.0}, region_probs=region_probs)
    assert not v.regions and calls[0][0] == (0, 0, 60, 40) and calls[0][1].all() and v.type == "hole"


def test_regions_from_adds_the_detector_regions_to_training(synthetic_object: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture, one_torch_thread) -> None:
    from defectlab.anomaly.detector import Detector
    from defectlab.anomaly.runner import RunConfig, fit_detector
    from defectlab.classify.pooled import detector_regions, with_detector_regions
    from defectlab.cli import main
    from defectlab.config import from_dict

    run = tmp_path / "run"
    fit_detector(from_dict(RunConfig, {"data": str(synthetic_object), "model": "patchcore", "image_size": 128,
                                       "resize": "squash", "holdout": 0.25,
                                       "options": {"coreset_ratio": 0.1}})).save(run)
    recs = sorted((r for r in open_dataset(synthetic_object).records if r.split == "test" and r.mask_path),
                  key=lambda r: str(r.path))
    c2i = {c: i for i, c in enumerate(sorted({r.defect_type for r in recs}))}
    images = cache_images(recs, c2i, size=64, input="pooled")
    both = with_detector_regions(images, run, size=64)
    n = len(images)
    assert len(both) == 2 * n and torch.equal(both.images[:n], images.images)
    assert torch.equal(both.labels, torch.cat([images.labels, images.labels])) and both.paths == images.paths * 2
    det = Detector.load(run)
    regions = detector_regions(run, images.paths)
    for i, (path, region) in enumerate(zip(images.paths, regions, strict=True)):
        want = det.predict_images([path])[0].anomaly_map > det.thresholds.pixel
        img = v2.functional.pil_to_tensor(load_pil(path, "RGB"))
        if region is None:  # nothing passes: no region, the whole image
            assert not want.any() and both.images[n + i, 3].max() == 0
        else:
            assert np.array_equal(region, want)
            assert torch.equal(both.images[n + i], pooled_input(img, region, 64))
    found = [r for r in regions if r is not None]
    assert len(found) >= n // 2  # planted defects: the detector finds most
    # the probe's feature cache tells an image with its mask from the same image with its detector region
    from defectlab.classify.probe import features

    fitter = ProbeFitter(ModelConfig("mobilenet_v2", weights="imagenet"),
                         TrainConfig(image_size=64, input="pooled", probe="linear"), sorted(c2i), tmp_path / "p",
                         progress=False).fit(images, images)  # caches the masks' features
    got = fitter._train_features(fitter.setup_, both, torch.device("cpu"))  # noqa: SLF001
    fresh = features(fitter.setup_, both.images, batch_size=16, device=torch.device("cpu"), flips=True)
    torch.testing.assert_close(got, fresh)
    assert not torch.allclose(got[: 4 * n], got[4 * n:])
    # an attempt: regions_from relative to the YAML; twice the training rows, validation and test unchanged
    classes = sorted(c2i)[:2]
    cfg = {"data": {"dataset": str(synthetic_object), "classes": classes,
                    "split": {"folds": 3, "test": 0.0, "use_train_good": False, "seed": 0, "classes": classes}},
           "base": {"model": {"name": "mobilenet_v2", "weights": "imagenet"},
                    "train": {"image_size": 64, "input": "pooled", "probe": "linear"}},
           "attempts": [{"name": "masks"}, {"name": "both", "train": {"regions_from": "run"}}]}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    exp = load_experiment(tmp_path / "exp.yaml")
    assert exp.attempts[1].train["regions_from"] == str(run.resolve())
    masks, with_regions = run_experiment(exp, tmp_path / "out", progress=False)
    assert with_regions["n_train"] == 2 * masks["n_train"] and with_regions["n_test"] == masks["n_test"]
    # classify predict --regions-from: each image's detector region, as predict_regions with it
    files = images.paths[:4]
    capsys.readouterr()
    assert main(["classify", "predict", str(tmp_path / "out"), "--attempt", "both", *files,
                 "--regions-from", str(run)]) == 0
    lines = [ln.split("\t") for ln in capsys.readouterr().out.splitlines() if not ln.startswith("#")]
    pred = Predictor(pick_checkpoint(tmp_path / "out", "both"), device="cpu")
    for (path, label, prob), region in zip(lines, regions[:4], strict=True):
        box = mask_box(region) if region is not None else None
        want = pred.predict_regions(path, [box], [region])[0]
        assert label == want.label and float(prob) == pytest.approx(want.probability, abs=1e-3)
    assert main(["classify", "predict", str(tmp_path / "out"), files[0], "--regions-from", str(run),
                 "--masks", str(synthetic_object)]) == 2
    with pytest.raises(ConfigError, match="regions_from.*pooled") as err:
        check_config(TrainConfig(input="region", regions_from=str(run)))
    assert "\n" not in str(err.value)
