"""Metric functions against scikit-learn (to 1e-6, with ties) and against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn import metrics as skm

from defectlab.errors import DefectLabError
from defectlab.metrics import (
    MetricInputError,
    accuracy,
    anomaly_metrics,
    aupro,
    auroc,
    average_precision,
    background_auroc,
    balanced_accuracy,
    binary_dice,
    binary_iou,
    classification_metrics,
    confusion_matrix,
    f1_max,
    image_auroc,
    macro_f1,
    mean_iou,
    never_predicted,
    per_class_dice,
    per_class_iou,
    per_class_precision_recall,
    pixel_auroc,
    pro_curve,
    shot_accuracy,
    shot_groups,
    threshold_from_good,
)

TOL = 1e-6


def _scores(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    if kind == "ties":
        return rng.integers(0, 12, n) / 12.0  # many exact ties
    if kind == "float32":
        return rng.normal(size=n).astype(np.float32)
    return rng.normal(size=n)


CASES = [(seed, kind) for seed in range(4) for kind in ("ties", "continuous", "float32")]


@pytest.mark.parametrize("seed,kind", CASES)
def test_binary_metrics_match_sklearn(seed: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    y = rng.random(n) < rng.uniform(0.1, 0.6)
    y[:2] = [True, False]
    s = _scores(rng, n, kind) + 0.7 * y * (kind != "ties")
    assert auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=TOL)
    assert image_auroc(y.astype(int), s) == pytest.approx(skm.roc_auc_score(y, s), abs=TOL)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=TOL)

    precision, recall, thresholds = skm.precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    best, thr = f1_max(y, s)
    assert best == pytest.approx(f1[:-1].max(), abs=TOL)
    assert thr in set(thresholds.tolist())
    assert skm.f1_score(y, s >= thr) == pytest.approx(best, abs=TOL)  # the threshold achieves it


def test_torch_inputs_and_perfect_and_inverted() -> None:
    y = torch.tensor([0, 0, 1, 1, 0, 1])
    s = torch.tensor([0.1, 0.2, 0.9, 0.8, 0.3, 0.7])
    assert auroc(y, s) == 1.0
    assert auroc(y, -s) == 0.0
    assert auroc(y, torch.zeros(6)) == 0.5  # all tied
    assert f1_max(y, s) == (1.0, pytest.approx(0.7))
    assert average_precision(y, s) == pytest.approx(1.0)


def test_pixel_auroc_matches_sklearn_on_batches_and_lists() -> None:
    rng = np.random.default_rng(7)
    masks = np.zeros((5, 32, 40), dtype=bool)
    masks[1, 4:12, 5:15] = True
    masks[3, 20:30, 30:38] = True
    maps = ndimage.gaussian_filter(rng.random(masks.shape), sigma=(0, 2, 2)) + 0.05 * masks
    maps = np.round(maps, 3)  # ties
    expected = skm.roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=TOL)
    assert pixel_auroc(torch.from_numpy(masks), torch.from_numpy(maps)) == pytest.approx(expected, abs=TOL)
    # images of different sizes, as lists
    lm = [masks[1], masks[3][:20, :], masks[0][:10, :7]]
    la = [maps[1], maps[3][:20, :], maps[0][:10, :7]]
    flat_m = np.concatenate([m.ravel() for m in lm])
    flat_a = np.concatenate([a.ravel() for a in la])
    assert pixel_auroc(lm, la) == pytest.approx(skm.roc_auc_score(flat_m, flat_a), abs=TOL)
    pf1, pthr = f1_max(masks, maps)
    assert skm.f1_score(masks.ravel(), maps.ravel() >= pthr) == pytest.approx(pf1, abs=TOL)
    assert average_precision(masks, maps) == pytest.approx(
        skm.average_precision_score(masks.ravel(), maps.ravel()), abs=TOL
    )


# ---------------------------------------------------------------- AUPRO


def test_aupro_perfect_inverted_and_hand_computed() -> None:
    mask = np.zeros((3, 8, 8), dtype=bool)
    mask[0, 1:4, 1:4] = True
    mask[2, 5:8, 0:2] = True
    assert aupro(mask, mask.astype(float)) == pytest.approx(1.0)
    assert aupro(mask, 1.0 - mask) == pytest.approx(0.0, abs=1e-12)

    # Hand case: one 2x5 image, region A = {(0,0),(0,1)} scored 0.9/0.5, region B = {(1,4)} scored 0.7,
    # seven good pixels 0.8, 0.6, 0.4, ... The curve (FPR, PRO): (0,.25) (1/7,.25) (1/7,.75) (2/7,.75)
    # (2/7,1) -> area to 0.3 = .25/7 + .75/7 + (0.3 - 2/7) = 0.3 - 1/7.
    m = np.array([[1, 1, 0, 0, 0], [0, 0, 0, 0, 1]], dtype=bool)
    a = np.array([[0.9, 0.5, 0.8, 0.6, 0.4], [0.3, 0.2, 0.1, 0.0, 0.7]])
    assert aupro(m, a) == pytest.approx((0.3 - 1 / 7) / 0.3, abs=1e-12)
    fpr, pro, thr = pro_curve(m, a)
    assert fpr[:4] == pytest.approx([0, 0, 1 / 7, 1 / 7])
    assert pro[:4] == pytest.approx([0, 0.25, 0.25, 0.75])
    assert thr[1] == 0.9
    # full integration range: the PRO reaches 1 at FPR 2/7 and stays there
    assert aupro(m, a, fpr_limit=1.0) == pytest.approx(0.25 / 7 + 0.75 / 7 + (1 - 2 / 7), abs=1e-12)


def test_aupro_uses_8_connectivity() -> None:
    m = np.zeros((4, 6), dtype=bool)
    m[0, 0] = m[1, 1] = True  # diagonal neighbours: one region under 8-connectivity
    m[0, 5] = True
    a = np.full(m.shape, 0.5)
    a[0, 0], a[1, 1], a[0, 5] = 0.0, 0.0, 1.0
    _, pro, _ = pro_curve(m, a)
    assert pro[1] == pytest.approx(0.5)  # 4-connectivity would give 1/3


@pytest.mark.parametrize("seed", range(3))
def test_aupro_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 12, 12), dtype=bool)
    for i in range(1, 4):
        y, x = rng.integers(0, 9, 2)
        masks[i, y : y + rng.integers(1, 4), x : x + rng.integers(1, 4)] = True
    masks[2, 10, 10] = True  # a second small region
    maps = np.round(rng.random(masks.shape) + 0.4 * masks, 2)  # ties
    # brute force with regions as (N, H, W) masks
    regions = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        for r in range(1, n + 1):
            full = np.zeros_like(masks)
            full[i] = lab == r
            regions.append(full)
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        hit = maps >= t
        fprs.append(hit[~masks].mean())
        pros.append(np.mean([hit[r].mean() for r in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    inside = fprs <= 0.3
    area = np.trapezoid(pros[inside], fprs[inside])
    j = np.argmax(~inside)
    y_lim = pros[j - 1] + (pros[j] - pros[j - 1]) * (0.3 - fprs[j - 1]) / (fprs[j] - fprs[j - 1])
    area += (0.3 - fprs[j - 1]) * (pros[j - 1] + y_lim) / 2
    assert aupro(masks, maps) == pytest.approx(area / 0.3, abs=1e-9)
    assert aupro(list(masks), list(maps)) == pytest.approx(area / 0.3, abs=1e-9)


# ---------------------------------------------------------------- errors and thresholds


def test_single_class_and_bad_inputs_give_clear_errors() -> None:
    with pytest.raises(MetricInputError, match="both good and anomalous"):
        auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(MetricInputError, match="both good and anomalous"):
        average_precision([0, 0], [0.1, 0.2])
    with pytest.raises(MetricInputError, match="both good and anomalous"):
        f1_max(np.zeros(4), np.arange(4.0))
    with pytest.raises(MetricInputError, match="anomalous region"):
        aupro(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4)))
    with pytest.raises(MetricInputError, match="good pixels"):
        aupro(np.ones((1, 4, 4), bool), np.zeros((1, 4, 4)))
    with pytest.raises(MetricInputError, match="differ in size"):
        auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(MetricInputError, match="NaN"):
        auroc([0, 1], [0.1, np.nan])
    with pytest.raises(MetricInputError, match="0 or 1"):
        auroc([0, 2], [0.1, 0.2])
    with pytest.raises(MetricInputError, match="shape"):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5)))
    err = pytest.raises(DefectLabError, auroc, [1], [0.5])  # also a DefectLabError (one-line CLI error)
    assert isinstance(err.value, ValueError)


def test_threshold_from_good() -> None:
    good = np.arange(101, dtype=float)  # 0..100
    assert threshold_from_good(good, 0.9) == pytest.approx(90.0)
    assert threshold_from_good(torch.tensor([1.0, 2.0, 3.0]), 1.0) == 3.0
    assert np.mean(good > threshold_from_good(good, 0.95)) <= 0.05
    with pytest.raises(MetricInputError):
        threshold_from_good([], 0.9)
    with pytest.raises(MetricInputError):
        threshold_from_good([1.0, 2.0], 0.0)


def test_anomaly_metrics_summary() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    masks = np.zeros((4, 8, 8), bool)
    masks[2:, 2:5, 2:5] = True
    maps = masks * 1.0 + 0.01 * np.arange(64).reshape(8, 8)
    out = anomaly_metrics(labels, scores, masks, maps)
    assert out["image_auroc"] == pytest.approx(0.75)
    assert out["pixel_auroc"] == pytest.approx(1.0)
    assert out["pixel_aupro"] == pytest.approx(1.0)
    assert set(out) >= {"image_f1_max", "image_f1_threshold", "pixel_f1_max", "image_ap", "pixel_ap"}
    assert set(anomaly_metrics(labels, scores)) == {"image_auroc", "image_ap", "image_f1_max", "image_f1_threshold"}


def test_background_auroc_flags_a_test_set_whose_defective_images_differ_beyond_their_defects() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(40), np.ones(40)].astype(int)
    masks = np.zeros((80, 16, 16), bool)
    masks[40:, 4:8, 4:8] = True
    fair = rng.normal(0, 1, (80, 16, 16)) + 5 * masks  # defect-free areas from one distribution
    assert 0.3 < background_auroc(labels, masks, fair) < 0.7
    leaky = fair + 0.5 * labels[:, None, None]  # every defective image's background shifted
    assert background_auroc(labels, masks, leaky) > 0.95
    assert anomaly_metrics(labels, labels.astype(float), masks, leaky)["background_auroc"] > 0.95
    full = masks.copy()
    full[40:] = True  # masks covering everything leave no defective image to compare
    assert np.isnan(background_auroc(labels, full, fair))
    with pytest.raises(MetricInputError, match="3 labels but 80"):
        background_auroc(labels[:3], masks, fair)


# ---------------------------------------------------------------- classification


@pytest.mark.parametrize("seed", range(5))
def test_classification_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k = 300, 6
    y = rng.integers(0, k, n)
    p = np.where(rng.random(n) < 0.6, y, rng.integers(0, k - 1, n))  # class 5 rarely predicted
    if seed == 0:
        p[p == 5] = 4  # a class never predicted
    assert accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p), abs=TOL)
    assert balanced_accuracy(y, p) == pytest.approx(skm.balanced_accuracy_score(y, p), abs=TOL)
    with np.errstate(all="ignore"):
        assert macro_f1(y, p) == pytest.approx(skm.f1_score(y, p, average="macro", zero_division=0), abs=TOL)
        pr = skm.precision_score(y, p, average=None, zero_division=0)
        rc = skm.recall_score(y, p, average=None, zero_division=0)
    rep = per_class_precision_recall(y, p)
    np.testing.assert_allclose(rep["precision"], pr, atol=TOL)
    np.testing.assert_allclose(rep["recall"], rc, atol=TOL)
    np.testing.assert_array_equal(confusion_matrix(y, p), skm.confusion_matrix(y, p))
    order = [3, 0, 5, 1]
    np.testing.assert_array_equal(confusion_matrix(y, p, order), skm.confusion_matrix(y, p, labels=order))
    if seed == 0:
        assert never_predicted(y, p) == [5]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_classification_string_labels_and_absent_true_class() -> None:
    y = np.array(["crack", "crack", "hole", "hole", "scratch"])
    p = np.array(["crack", "hole", "hole", "stain", "crack"])  # 'stain' never true, 'scratch' never predicted
    assert balanced_accuracy(y, p) == pytest.approx(skm.balanced_accuracy_score(y, p), abs=TOL)
    assert macro_f1(y, p) == pytest.approx(skm.f1_score(y, p, average="macro", zero_division=0), abs=TOL)
    np.testing.assert_array_equal(confusion_matrix(y, p), skm.confusion_matrix(y, p))
    assert never_predicted(y, p) == ["scratch"]
    summary = classification_metrics(y, p)
    assert summary["labels"] == ["crack", "hole", "scratch", "stain"]
    assert summary["per_class"]["crack"]["precision"] == pytest.approx(0.5)


def test_shot_accuracy_hand_computed() -> None:
    train_counts = {0: 500, 1: 150, 2: 50, 3: 20, 4: 19, 5: 3}
    assert shot_groups(train_counts) == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}
    y = np.array([0, 0, 1, 1, 2, 3, 3, 4, 5, 5])
    p = np.array([0, 0, 1, 0, 2, 2, 3, 0, 0, 5])
    out = shot_accuracy(y, p, train_counts)
    assert out == {"many": pytest.approx(3 / 4), "medium": pytest.approx(2 / 3), "few": pytest.approx(1 / 3)}
    custom = shot_accuracy(y, p, [500, 150, 50, 20, 19, 3], many=200, few=100)  # list indexed by class id
    assert custom == {"many": 1.0, "medium": pytest.approx(1 / 2), "few": pytest.approx(3 / 6)}
    assert shot_accuracy([0, 0], [0, 1], {0: 1000})["few"] is None
    with pytest.raises(MetricInputError, match="no training count"):
        shot_accuracy([0, 7], [0, 7], train_counts)
    assert classification_metrics(y, p, train_counts=train_counts)["shot_accuracy"] == out


# ---------------------------------------------------------------- segmentation


def test_binary_iou_dice_match_sklearn_and_conventions() -> None:
    rng = np.random.default_rng(3)
    pred = rng.random((4, 16, 16)) < 0.3
    target = rng.random((4, 16, 16)) < 0.3
    assert binary_iou(pred, target) == pytest.approx(skm.jaccard_score(target.ravel(), pred.ravel()), abs=TOL)
    assert binary_dice(pred, target) == pytest.approx(skm.f1_score(target.ravel(), pred.ravel()), abs=TOL)
    per_img = np.mean([skm.jaccard_score(t.ravel(), p.ravel()) for p, t in zip(pred, target, strict=True)])
    assert binary_iou(pred, target, per_image=True) == pytest.approx(per_img, abs=TOL)
    scores = rng.random((16, 16))
    assert binary_iou(scores, target[0], threshold=0.7) == pytest.approx(binary_iou(scores > 0.7, target[0]))

    empty = np.zeros((8, 8), bool)
    full = np.ones((8, 8), bool)
    assert binary_iou(empty, empty) == 1.0 and binary_dice(empty, empty) == 1.0
    assert binary_iou(empty, empty, empty=0.0) == 0.0
    assert binary_iou(full, empty) == 0.0 and binary_dice(empty, full) == 0.0
    # per image: one good image predicted clean (1.0) and one half-right image (IoU 0.5, Dice 2/3)
    p = np.stack([empty, full])
    t = np.stack([empty, np.repeat([[True], [False]], 4, axis=0).repeat(8, axis=1)])
    assert binary_iou(p, t, per_image=True) == pytest.approx(0.75)
    assert binary_dice(p, t, per_image=True) == pytest.approx((1 + 2 / 3) / 2)
    assert binary_iou(p, t) == pytest.approx(0.5)  # pooled: the empty image weighs nothing
    with pytest.raises(MetricInputError, match="threshold"):
        binary_iou(scores, target[0])


def test_per_class_iou_dice() -> None:
    rng = np.random.default_rng(4)
    pred = rng.integers(0, 4, (3, 10, 10))
    target = rng.integers(0, 4, (3, 10, 10))
    np.testing.assert_allclose(
        per_class_iou(pred, target, 4), skm.jaccard_score(target.ravel(), pred.ravel(), average=None), atol=TOL
    )
    np.testing.assert_allclose(
        per_class_dice(pred, target, 4), skm.f1_score(target.ravel(), pred.ravel(), average=None), atol=TOL
    )
    iou = per_class_iou(pred, target, 5)  # class 4 absent from both -> NaN, left out of the mean
    assert np.isnan(iou[4])
    assert mean_iou(pred, target, 5) == pytest.approx(np.mean(iou[:4]))
    ignored = target.copy()
    ignored[0] = 255
    np.testing.assert_allclose(
        per_class_iou(pred, ignored, 4, ignore_index=255),
        skm.jaccard_score(target[1:].ravel(), pred[1:].ravel(), average=None),
        atol=TOL,
    )
    with pytest.raises(MetricInputError, match="outside"):
        per_class_iou(pred, target, 3)
