"""The saved detector: refused files, maps at original size, boxes, the coreset, letterbox geometry, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from defectlab.anomaly.coreset import StreamingCoreset, greedy_kcenter
from defectlab.anomaly.detector import META_FILE, MODEL_FILE, Detector, boxes_from_map
from defectlab.anomaly.geometry import map_to_original
from defectlab.anomaly.runner import RunConfig, fit_detector, split_train
from defectlab.cli import main
from defectlab.data.index import DatasetIndex, SampleRecord
from defectlab.data.transforms import STD_MEAN, STD_SCALE, PairTransform, standardize_intensity
from defectlab.errors import BadInputError, ConfigError


@pytest.fixture(scope="module")
def knn_run(synthetic_object: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("knn_run")
    cfg = RunConfig(data=str(synthetic_object), model="patchcore", options={"coreset_ratio": 0.1}, image_size=64,
                    resize="letterbox", holdout=0.25, batch_size=12)
    fit_detector(cfg).save(run)
    return run


def test_tampered_truncated_and_missing_files_are_refused(knn_run: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(knn_run, bad)
    data = bytearray((bad / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(BadInputError, match="checksum mismatch"):
        Detector.load(bad)
    (bad / MODEL_FILE).write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(BadInputError, match="modified or truncated"):
        Detector.load(bad)
    (bad / MODEL_FILE).unlink()
    with pytest.raises(BadInputError, match="model file missing"):
        Detector.load(bad)
    (bad / META_FILE).write_text("{not json")
    with pytest.raises(BadInputError, match="unreadable"):
        Detector.load(bad)
    with pytest.raises(BadInputError, match="not a detector run folder"):
        Detector.load(tmp_path)


def test_predictions_at_original_size_with_boxes(knn_run: Path, synthetic_object: Path) -> None:
    det = Detector.load(knn_run)
    info = det.info()
    assert info["method"] == "patchcore" and info["backbone"] == "efficientnet_lite0" and "imagenet" in info["weights"]
    assert info["image_size"] == [64, 64] and info["training"]["n_fit"] == 18
    defect = sorted((synthetic_object / "test" / "hole").glob("*.png"))[0]
    wide = Image.open(defect).convert("RGB").resize((200, 100))  # a non-square image: letterboxed
    preds = det.predict_images([defect, wide])
    assert preds[0].anomaly_map.shape == (128, 128) and preds[1].anomaly_map.shape == (100, 200)
    assert preds[0].is_defect and preds[0].boxes and preds[0].score > preds[0].threshold
    x0, y0, x1, y1 = preds[0].boxes[0]
    mask = np.asarray(Image.open(synthetic_object / "ground_truth" / "hole" / f"{defect.stem}_mask.png")) > 0
    ys, xs = np.nonzero(mask)
    assert x0 <= xs.mean() <= x1 and y0 <= ys.mean() <= y1  # the region covers the hole


def test_boxes_from_map() -> None:
    m = np.zeros((10, 12), np.float32)
    m[1:3, 2:5] = 1.0
    m[6:10, 8:12] = 2.0
    assert boxes_from_map(m, 0.5) == [(8, 6, 12, 10), (2, 1, 5, 3)]
    assert boxes_from_map(m, 5.0) == []


def test_letterbox_map_goes_back_to_the_image_region() -> None:
    img = Image.new("RGB", (90, 30))
    x, _ = PairTransform(48, resize="letterbox")(img, None)
    inside = (x[0] != x[0, 0, 0]).float()  # padding is constant; the image is black too, so build a map
    amap = torch.zeros(48, 48)
    amap[16:32, :] = 1.0  # the letterboxed 90x30 image occupies rows 16..31
    full = map_to_original(amap, (30, 90), "letterbox")
    assert full.shape == (30, 90) and np.allclose(full, 1.0)
    del inside


def test_greedy_kcenter_picks_farthest_points_and_streaming_bounds() -> None:
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [0.0, 5.0], [10.0, 0.1]])
    assert greedy_kcenter(x, 3, start=0).tolist() == [0, 4, 3]  # farthest from 0, then from {0, 4}
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(5000, 3, generator=gen)

    def coreset(final_rows: int) -> torch.Tensor:
        cs = StreamingCoreset(0.02, 3, chunk_size=1000, final_rows=final_rows)
        for part in rows.split(700):
            cs.add(part)
        return cs.finish()

    def cover(b: torch.Tensor) -> float:
        return float(torch.cdist(rows, b).min(1).values.max())

    streamed, exact = coreset(final_rows=2000), coreset(final_rows=5000)
    assert streamed.shape == exact.shape == (100, 3)
    # up to final_rows patches: one exact greedy pass over all of them, from a seeded random start
    start = int(torch.randint(5000, (1,), generator=torch.Generator().manual_seed(0)))
    assert torch.equal(exact, rows[greedy_kcenter(rows, 100, start=start)])
    # a k-center cover beats a random subset of the same size at covering the data; the exact one most
    random_cover = cover(rows[torch.randperm(5000, generator=gen)[:100]])
    assert cover(exact) <= cover(streamed) < random_cover


def test_cli_fit_test_predict(synthetic_object: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    args = ["anomaly", "fit", str(synthetic_object), "--out", str(run), "--model", "knn", "--image-size", "64",
            "--resize", "squash", "--holdout", "0.25"]
    assert main(args) == 0
    for name in ("config.yaml", META_FILE, MODEL_FILE, "metrics.json", "scores.csv", "report.md"):
        assert (run / name).is_file(), name
    assert list((run / "overlays").glob("*.png"))
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert {"all", "crack", "hole", "scratch", "contamination"} <= set(metrics)
    assert "| hole |" in (run / "report.md").read_text()
    assert json.loads((run / META_FILE).read_text())["thresholds"]["image_f1"] is not None
    capsys.readouterr()
    assert main(args) == 0 and "reusing" in capsys.readouterr().out  # resumable: same config, no refit
    assert main(["anomaly", "test", str(run)]) == 0
    img = sorted((synthetic_object / "test" / "hole").glob("*.png"))[0]
    assert main(["anomaly", "predict", str(run), str(img), "--csv", str(tmp_path / "p.csv")]) == 0
    assert "hole" in (tmp_path / "p.csv").read_text()
    assert main(["anomaly", "predict", str(tmp_path), str(img)]) == 2
    assert main(["anomaly", "fit", str(synthetic_object), "--out", str(run), "--model", "patchcor"]) == 2
    assert main(["anomaly", "fit", str(synthetic_object), "--out", str(run), "--weights", str(tmp_path / "x.pth"),
                 "--force"]) == 2
    capsys.readouterr()
    assert main(args + ["--holdout-group", "^part", "--force"]) == 2  # file names 000.png...: no part named
    assert "000.png: file name does not match the group rule '^part'" in capsys.readouterr().err


def test_standardize_intensity_removes_exposure_and_gain() -> None:
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.integers(60, 140, (3, 40, 50), dtype=np.uint8))
    out = standardize_intensity(img)
    assert out.dtype == torch.float32 and abs(float(out.mean()) - STD_MEAN) < 1e-3
    assert abs(float(out.std()) - STD_SCALE) < 1e-3
    darker = (img.float() * 0.7 + 5).round().to(torch.uint8)  # another exposure and offset of the same scene
    assert float((standardize_intensity(darker) - out).abs().max()) < 0.02
    assert torch.allclose(standardize_intensity(torch.full((3, 8, 8), 77, dtype=torch.uint8)), torch.tensor(STD_MEAN))


def test_detector_verdicts_survive_an_exposure_change(knn_run: Path, synthetic_object: Path) -> None:
    det = Detector.load(knn_run)
    assert det.preprocess.standardize  # the runner's default, saved with the detector
    files = sorted((synthetic_object / "test").rglob("*.png"))[::3]
    pils = [Image.open(f).convert("RGB") for f in files]
    dim = [Image.fromarray((np.asarray(p, np.float32) * 0.75 + 8).round().astype(np.uint8)) for p in pils]
    a, b = det.predict_images(pils), det.predict_images(dim)
    assert [p.is_defect for p in a] == [p.is_defect for p in b]
    np.testing.assert_allclose([p.score for p in b], [p.score for p in a], rtol=0.05)


def test_holdout_group_holds_out_whole_parts() -> None:
    names = [f"part{k:02d}_light{j}.png" for k in range(20) for j in range(6)]
    index = DatasetIndex(Path("/data"), "parts", "mvtec",
                         [SampleRecord(Path("/data/train/good") / n, "train", "good") for n in names])
    part = lambda r: r.path.name.split("_")[0]  # noqa: E731
    for seed in range(3):
        fit, held = split_train(index, RunConfig(holdout=0.1, holdout_group=r"^(part\d+)_", seed=seed))
        assert len(held) == 12 and len(fit) == 108  # two whole parts of six shots
        assert not {part(r) for r in fit} & {part(r) for r in held}
    fit, held = split_train(index, RunConfig(holdout=0.1, holdout_group="none"))  # single shots: parts on both sides
    assert len(held) == 12 and {part(r) for r in fit} & {part(r) for r in held}
    extra = SampleRecord(Path("/data/x.png"), "train", "good")
    odd = DatasetIndex(Path("/data"), "parts", "mvtec", index.records + [extra])
    with pytest.raises(BadInputError, match=r"x\.png.*does not match the group rule"):
        split_train(odd, RunConfig(holdout_group=r"^(part\d+)_"))
    with pytest.raises(ConfigError, match="not a regular expression"):
        split_train(index, RunConfig(holdout_group="(part"))
    with pytest.raises(ConfigError, match="one part only"):
        split_train(index, RunConfig(holdout_group="light"))
