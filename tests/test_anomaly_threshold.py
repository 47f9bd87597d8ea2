"""Automatic near-duplicate groups, whole-group hold-out, and the false-alarm knob with its interval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectlab.anomaly.detector import Detector
from defectlab.anomaly.runner import RunConfig, fit_detector, holdout_split
from defectlab.anomaly.threshold import deployable_threshold
from defectlab.data.groups import group_keys, near_duplicate_groups
from defectlab.data.index import DatasetIndex, SampleRecord
from defectlab.data.synthetic import SynthConfig, make_synthetic


def _part(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """One physical part: a smooth random surface with a few dark marks, values in [0, 1]."""
    coarse = rng.normal(0, 1, (6, 6)).astype(np.float32)
    surface = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))
    surface = 0.5 + 0.15 * surface / (np.abs(surface).max() + 1e-6)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(3):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 8)
        surface[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] -= 0.25
    return surface


def _shot(part: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The part under another lighting: gain, offset, a lighting gradient, noise (one camera, one crop)."""
    h, w = part.shape
    ramp = (np.linspace(-1, 1, w)[None, :] * rng.uniform(-0.03, 0.03)
            + np.linspace(-1, 1, h)[:, None] * rng.uniform(-0.03, 0.03))
    img = part * rng.uniform(0.7, 1.3) + rng.uniform(-0.05, 0.05)
    return np.clip(img + ramp + rng.normal(0, 0.02, part.shape), 0, 1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[int]]:
    """15 parts x 5 lightings, shuffled; parts come in three sizes (one camera crops each part alike)."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("planted")
    items = []
    for k in range(15):
        h, w = [(60, 80), (64, 64), (72, 96)][k % 3]
        part = _part(rng, h, w)
        items += [(k, _shot(part, rng)) for _ in range(5)]
    order = rng.permutation(len(items))
    paths, truth = [], []
    for i, j in enumerate(order):
        k, img = items[j]
        paths.append(root / f"img{i:03d}.png")
        Image.fromarray((img * 255).astype(np.uint8), "L").save(paths[-1])
        truth.append(k)
    return paths, truth


def test_auto_grouping_recovers_planted_near_duplicates(planted: tuple[list[Path], list[int]]) -> None:
    paths, truth = planted
    groups = np.array(near_duplicate_groups(paths))
    t = np.array(truth)
    iu = np.triu_indices(len(t), 1)
    same, together = (t[:, None] == t[None, :])[iu], (groups[:, None] == groups[None, :])[iu]
    recall = (same & together).sum() / same.sum()
    precision = (same & together).sum() / together.sum()
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)
    assert len(set(groups.tolist())) == pytest.approx(15, abs=1)
    keys = group_keys(paths, "auto")  # the shared interface: one string key per path
    assert len(keys) == len(paths) and all(isinstance(k, str) for k in keys)


def test_auto_holdout_keeps_planted_parts_on_one_side(planted: tuple[list[Path], list[int]]) -> None:
    paths, truth = planted
    part = {p.name: k for p, k in zip(paths, truth, strict=True)}
    records = [SampleRecord(p, "train", "good") for p in paths]
    index = DatasetIndex(paths[0].parent, "planted", "mvtec", records)
    for seed in range(3):
        split = holdout_split(index, RunConfig(holdout=0.2, seed=seed))  # default rule: auto
        fitted, held = {part[r.path.name] for r in split.fit}, {part[r.path.name] for r in split.held}
        assert held and not fitted & held
        assert 12 <= len(split.held) <= 19 and "near-duplicate" in split.how


def test_false_alarm_estimate_covers_the_true_rate_on_iid_scores() -> None:
    rng = np.random.default_rng(1)
    inside, expected = 0, []
    for _ in range(40):
        est = deployable_threshold(rng.normal(size=60), None, 0.05, n_boot=300, seed=0)
        true_rate = float(np.mean(rng.normal(size=20000) > est.threshold))
        inside += est.interval[0] <= true_rate <= est.interval[1]
        expected.append(est.expected)
    assert inside >= 30  # a 90% interval: at least 75% coverage in 40 draws
    assert 0.03 <= float(np.mean(expected)) <= 0.10  # target 5% (slightly pessimistic by construction)


def test_false_alarm_knob_holds_on_new_synthetic_good_images(tmp_path: Path) -> None:
    data = make_synthetic(tmp_path, SynthConfig(kind="texture", size=64, n_train=60, n_test_good=150,
                                                n_per_defect=0, defects=(), seed=3))
    cfg = RunConfig(data=str(data), options={"coreset_ratio": 0.1}, image_size=64, holdout=0.4,
                    false_alarm=0.1)
    det = fit_detector(cfg)
    t = det.thresholds
    assert t.false_alarm == pytest.approx(0.1) and t.false_alarm_interval is not None and t.holdout
    new_good = sorted((data / "test" / "good").glob("*.png"))
    observed = float(np.mean([p.is_defect for p in det.predict_images(new_good)]))
    lo, hi = t.false_alarm_interval
    assert lo <= observed <= hi, (observed, t.false_alarm_interval, t.expected_false_alarm)
    assert "expected" in t.rule and "target false-alarm rate 0.1" in t.rule
    assert RunConfig(quantile=0.95).quantile == 0.95 and Detector  # the old knob still maps (see runner)
