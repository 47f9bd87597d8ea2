"""Segmentation: U-Net shapes, the seeded split, the shared evaluation (hand-computed), a tiny U-Net that
learns synthetic masks, and the CLI run folder (fit -> test -> predict, checkpoint reload)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from defectlab.cli import main
from defectlab.data.dataset import load_pair
from defectlab.data.index import SampleRecord, open_dataset
from defectlab.data.synthetic import SynthConfig, make_synthetic
from defectlab.errors import BadInputError, ConfigError
from defectlab.segment import SegConfig, Segmenter, build_unet, evaluate_maps, segmentation_split
from defectlab.segment.losses import bce_dice_loss


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = SynthConfig(kind="texture", size=64, n_train=6, n_test_good=4, n_per_defect=6,
                      defects=("hole", "contamination"), seed=0)
    return make_synthetic(tmp_path_factory.mktemp("seg"), cfg)


@pytest.mark.parametrize("encoder,weights", [("small", None), ("mobilenet_v2", "imagenet")])
def test_unet_output_shape(encoder: str, weights: str | None) -> None:
    model = build_unet(encoder=encoder, num_classes=3, base=8, weights=weights).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 72, 56))
    assert y.shape == (1, 3, 72, 56)
    loss = bce_dice_loss(y, torch.zeros_like(y))
    assert torch.isfinite(loss)


def test_small_encoder_refuses_pretrained_weights() -> None:
    with pytest.raises(ConfigError, match="no pretrained weights"):
        build_unet(encoder="small", weights="imagenet")
    with pytest.raises(ConfigError, match="unknown U-Net encoder"):
        build_unet(encoder="unet++")


def test_split_is_stratified_seeded_and_disjoint(tiny: Path) -> None:
    idx = open_dataset(tiny)
    a = segmentation_split(idx, test_fraction=0.5, seed=3, max_good_train=4)
    b = segmentation_split(idx, test_fraction=0.5, seed=3, max_good_train=4)
    assert [r.path for r in a["train"]] == [r.path for r in b["train"]]
    assert not {r.path for r in a["train"]} & {r.path for r in a["test"]}
    for dt in ("hole", "contamination"):
        n_train = sum(r.defect_type == dt for r in a["train"])
        assert n_train == 3 == sum(r.defect_type == dt for r in a["test"])
    assert sum(r.defect_type == "good" for r in a["train"]) == 4  # capped, from train/good
    assert all(r.split == "test" for r in a["test"] if r.defect_type == "good")


def test_evaluate_maps_hand_computed(tmp_path: Path) -> None:
    recs, gts, maps = [], [], []
    for i, (dt, gt_box, pred_box) in enumerate([("dent", (2, 6), (4, 8)), ("dent", (0, 4), (0, 4)),
                                                 ("good", None, (0, 1))]):
        g = np.zeros((10, 10), bool)
        p = np.zeros((10, 10), np.float32)
        if gt_box:
            g[gt_box[0]:gt_box[1], 0:5] = True
        p[pred_box[0]:pred_box[1], 0:5] = 0.9
        recs.append(SampleRecord(tmp_path / f"{i}.png", "test", dt, None))
        gts.append(g)
        maps.append(p)
    m = evaluate_maps(maps, recs, 0.5, masks=gts)
    # image 0: |P&T| = 2 rows x 5 = 10, |P|T| = 6 x 5 = 30; image 1: 20 / 20 -> pooled 30 / 50
    assert m["per_type"]["dent"]["iou"] == pytest.approx(30 / 50)
    assert m["per_type"]["dent"]["dice"] == pytest.approx(2 * 30 / (40 + 40))
    assert m["per_type"]["dent"]["per_image_iou"] == pytest.approx((10 / 30 + 1.0) / 2)
    assert m["good"]["images_with_false_alarm"] == 1.0
    assert m["good"]["false_pixel_rate"] == pytest.approx(0.05)
    assert 0.5 < m["pixel_auroc"] < 1.0
    with pytest.raises(BadInputError, match="map is"):
        evaluate_maps([np.zeros((3, 3))], recs[:1], 0.5, masks=gts[:1])


def _baseline_iou(records: list[SampleRecord]) -> float:
    """IoU of the trivial 'everything is defect' prediction (predicting nothing scores 0)."""
    gts = [load_pair(r)[1] for r in records]
    return float(sum(g.sum() for g in gts) / sum(g.size for g in gts))


def test_tiny_unet_learns_synthetic_masks(tiny: Path) -> None:
    idx = open_dataset(tiny)
    recs = [r for r in idx.records if r.defect_type != "good" or r.split == "train"][:16]
    seg = Segmenter(SegConfig(size=64, base=8, epochs=8, batch_size=8, lr=1e-2, augment="none")).fit(recs)
    assert seg.history_[-1]["loss"] < seg.history_[0]["loss"]
    probs = seg.predict_proba([load_pair(r)[0] for r in recs])
    m = evaluate_maps([p[0] for p in probs], recs, 0.5)
    iou = m["per_type"]["all_defects"]["iou"]
    assert iou >= 0.4 and iou > 5 * _baseline_iou([r for r in recs if r.label]), m["per_type"]


def test_cli_fit_test_predict(tiny: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    rc = main(["segment", "fit", str(tiny), "--out", str(run), "--mode", "multi", "--size", "32",
               "--epochs", "1", "--batch-size", "8", "--max-good-train", "3"])
    assert rc == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["segment"]["mode"] == "multi" and cfg["segment"]["size"] == 32
    assert len(json.loads((run / "history.json").read_text())) == 1
    assert main(["segment", "test", str(run), "--overlays", "1"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["per_type"]) == {"hole", "contamination", "all_defects"}
    assert set(metrics["class_aware"]) == {"hole", "contamination"} and metrics["good"]["n"] == 4
    assert len(list((run / "overlays").rglob("*.png"))) == 3  # one per type incl. good
    # reload gives the same probabilities as a fresh load
    img = Image.open(next((tiny / "test" / "hole").iterdir())).convert("RGB")
    a = Segmenter.load(run / "model.pt").predict_proba([img])[0]
    b = Segmenter.load(run / "model.pt").predict_proba([img])[0]
    assert a.shape == (2, 64, 64) and np.array_equal(a, b)
    out = tmp_path / "pred"
    assert main(["segment", "predict", str(run), str(tiny / "test" / "hole"), "--out", str(out)]) == 0
    preds = json.loads((out / "predictions.json").read_text())
    assert len(preds) == 6 and (out / f"{Path(preds[0]['path']).stem}_mask.png").is_file()
    assert main(["segment", "test", str(tmp_path / "nope")]) == 2
    # a good-only detector's thresholded maps, scored on the U-Net run's held-out images
    from defectlab.anomaly.runner import RunConfig, fit_detector

    det = fit_detector(RunConfig(data=str(tiny), model="patchcore", image_size=64, holdout=0.34))
    det.save(tmp_path / "pc")
    assert main(["segment", "test", str(tmp_path / "pc"), "--split-from", str(run)]) == 0
    loc = json.loads((tmp_path / "pc" / "localisation.json").read_text())
    assert loc["method"] == "patchcore" and loc["threshold"] == pytest.approx(det.thresholds.pixel)
    counts = {k: v["n"] for k, v in metrics["per_type"].items()}
    assert {k: v["n"] for k, v in loc["per_type"].items()} == counts
    assert main(["segment", "test", str(tmp_path / "pc")]) == 2  # needs DATA or --split-from
