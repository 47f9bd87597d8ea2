"""Long-tail methods: losses against hand-computed values, sampler frequencies, methods, oversampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from torch import nn

from defectlab.errors import ConfigError
from defectlab.imbalance import (
    LOSSES,
    METHODS,
    SAMPLERS,
    DeepSMOTE,
    balanced_contrastive_loss,
    build_method,
    build_sampler,
    expected_class_probs,
    groups_by_count,
    posthoc_logit_adjust,
    smote_features,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------- a 3-class toy batch
COUNTS = [100, 20, 4]
Z = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [-0.5, 0.2, 0.3], [1.0, 1.0, 1.0]]
Y = [0, 2, 1, 2]


def _lse(v: list[float]) -> float:
    return math.log(sum(math.exp(a) for a in v))


def _nll(z: list[float], y: int) -> float:
    return _lse(z) - z[y]


def _loss(name: str, **params: object) -> float:
    return float(LOSSES.get(name)(COUNTS, **params)(torch.tensor(Z), torch.tensor(Y)))


def test_ce_hand() -> None:
    want = sum(_nll(z, y) for z, y in zip(Z, Y, strict=True)) / 4
    assert _loss("ce") == pytest.approx(want, rel=1e-5)


def test_weighted_ce_hand() -> None:
    # w ∝ 1/n = [0.01, 0.05, 0.25], normalised to mean 1 -> [0.0968, 0.4839, 2.4194]
    raw = [0.01, 0.05, 0.25]
    w = [r / (sum(raw) / 3) for r in raw]
    assert w[2] == pytest.approx(2.41935, rel=1e-4)
    want = sum(w[y] * _nll(z, y) for z, y in zip(Z, Y, strict=True)) / sum(w[y] for y in Y)
    assert _loss("weighted_ce") == pytest.approx(want, rel=1e-5)
    # power 0.5: w ∝ 1/sqrt(n)
    raw = [1 / 10, 1 / math.sqrt(20), 1 / 2]
    w = [r / (sum(raw) / 3) for r in raw]
    want = sum(w[y] * _nll(z, y) for z, y in zip(Z, Y, strict=True)) / sum(w[y] for y in Y)
    assert _loss("weighted_ce", power=0.5) == pytest.approx(want, rel=1e-5)


def test_focal_hand() -> None:
    def fl(gamma: float, alpha: list[float] | None) -> float:
        total = 0.0
        for z, y in zip(Z, Y, strict=True):
            p = math.exp(z[y] - _lse(z))
            total += -(alpha[y] if alpha else 1.0) * (1 - p) ** gamma * math.log(p)
        return total / 4

    assert _loss("focal", gamma=2.0) == pytest.approx(fl(2.0, None), rel=1e-5)
    assert _loss("focal", gamma=0.0) == pytest.approx(_loss("ce"), rel=1e-6)
    assert _loss("focal", gamma=1.5, alpha=[0.25, 0.5, 1.0]) == pytest.approx(fl(1.5, [0.25, 0.5, 1.0]), rel=1e-5)
    # first sample by hand: p = e^2 / (e^2 + 1 + e^-1) = 0.8438, (1-p)^2 * -log p = 0.004164
    p0 = math.exp(2) / (math.exp(2) + 1 + math.exp(-1))
    assert p0 == pytest.approx(0.843795, rel=1e-5)


def test_class_balanced_hand() -> None:
    beta = 0.99
    eff = [(1 - beta ** n) / (1 - beta) for n in COUNTS]  # effective numbers: 63.40, 18.21, 3.94
    assert eff[0] == pytest.approx(63.3968, rel=1e-4)
    raw = [1 / e for e in eff]
    w = [r / sum(raw) * 3 for r in raw]
    want_ce = sum(w[y] * _nll(z, y) for z, y in zip(Z, Y, strict=True)) / 4
    assert _loss("cb", beta=beta) == pytest.approx(want_ce, rel=1e-5)
    want_focal = 0.0
    for z, y in zip(Z, Y, strict=True):
        p = math.exp(z[y] - _lse(z))
        want_focal += -w[y] * (1 - p) * math.log(p)
    assert _loss("cb", beta=beta, base="focal", gamma=1.0) == pytest.approx(want_focal / 4, rel=1e-5)


def test_balanced_softmax_and_logit_adjusted_hand() -> None:
    def shifted(offset: list[float]) -> float:
        return sum(_nll([a + o for a, o in zip(z, offset, strict=True)], y) for z, y in zip(Z, Y, strict=True)) / 4

    assert _loss("balanced_softmax") == pytest.approx(shifted([math.log(n) for n in COUNTS]), rel=1e-5)
    pi = [n / 124 for n in COUNTS]
    assert _loss("logit_adjusted", tau=0.5) == pytest.approx(shifted([0.5 * math.log(p) for p in pi]), rel=1e-5)
    # tau = 1 differs from balanced softmax only by a constant shift: the same loss
    assert _loss("logit_adjusted", tau=1.0) == pytest.approx(_loss("balanced_softmax"), rel=1e-5)
    adj = posthoc_logit_adjust(torch.tensor(Z), COUNTS, tau=1.0)
    assert adj[0].tolist() == pytest.approx([2 - math.log(100 / 124), -math.log(20 / 124), -1 - math.log(4 / 124)],
                                            rel=1e-5)


def test_losses_reject_bad_counts_and_params() -> None:
    with pytest.raises(ConfigError, match="no training images"):
        LOSSES.get("balanced_softmax")([10, 0, 3])
    with pytest.raises(ConfigError, match="beta"):
        LOSSES.get("cb")(COUNTS, beta=1.0)
    with pytest.raises(ConfigError, match="did you mean"):
        LOSSES.get("focall")


# ------------------------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("name", ["class_balanced", "sqrt"])
def test_sampler_class_frequencies(name: str) -> None:
    labels = [0] * 100 + [1] * 20 + [2] * 4
    n = 20000
    draws = list(iter(build_sampler(name, labels, {"num_samples": n, "seed": 0})))
    assert len(draws) == n and min(draws) >= 0 and max(draws) < len(labels)
    observed = np.bincount(np.asarray(labels)[draws], minlength=3)
    expected = expected_class_probs(name, labels) * n
    assert chisquare(observed, expected).pvalue > 1e-3
    # and the test has power: the instance distribution is clearly rejected
    assert chisquare(observed, np.array([100, 20, 4]) / 124 * n).pvalue < 1e-9


def test_instance_sampler_is_a_permutation() -> None:
    labels = [0] * 100 + [1] * 20 + [2] * 4
    s = SAMPLERS.get("instance")(labels, seed=1)
    order = list(iter(s))
    assert sorted(order) == list(range(124)) and order != list(range(124))
    assert len(list(iter(SAMPLERS.get("instance")(labels, num_samples=300, seed=1)))) == 300
    assert expected_class_probs("sqrt", labels) == pytest.approx(np.sqrt([100, 20, 4]) / np.sqrt([100, 20, 4]).sum())


# -------------------------------------------------------------------------------------------- methods
def _blobs(seed: int, counts: tuple[int, ...] = (100, 20, 4), test: int = 200):
    g = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0], [1.6, 0.0], [0.8, 1.386]])
    def draw(ns):
        x = np.concatenate([g.normal(means[c], 1.0, (n, 2)) for c, n in enumerate(ns)])
        y = np.concatenate([np.full(n, c) for c, n in enumerate(ns)])
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    return (*draw(counts), *draw((test,) * 3))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))


def _rare_recall(name: str, params: dict, seed: int, epochs: int = 60) -> float:
    x, y, xt, yt = _blobs(seed)
    torch.manual_seed(seed)
    method = build_method(name, params)
    model = method.wrap_model(_mlp(), 3, np.bincount(y.numpy()).tolist())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x) - 1, 32):
            idx = perm[s:s + 32]
            xb = x[idx]
            if method.views == 2:  # two "augmented views": small feature noise
                xb = torch.stack([xb + 0.1 * torch.randn(xb.shape, generator=g) for _ in range(2)], 1)
            loss = method.loss(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        out = model(xt)
        assert isinstance(out, torch.Tensor) and out.shape == (600, 3)  # eval: plain logits
        pred = method.predict_logits(out).argmax(1)
    return float((pred[yt == 2] == 2).float().mean())


@pytest.fixture(scope="module")
def plain_rare() -> list[float]:
    return [_rare_recall("plain", {}, s) for s in range(3)]


@pytest.mark.parametrize("name,params", [("bcl", {}), ("group_softmax", {"bins": [10, 50], "others_ratio": 4.0})])
def test_method_beats_ce_on_rarest_class(name: str, params: dict, plain_rare: list[float]) -> None:
    rare = [_rare_recall(name, params, s) for s in range(3)]
    assert np.mean(rare) > np.mean(plain_rare) + 0.2, (rare, plain_rare)
    assert all(r > p for r, p in zip(rare, plain_rare, strict=True)), (rare, plain_rare)


def _reference_bscl(emb: torch.Tensor, targets: torch.Tensor, protos: torch.Tensor, t: float) -> float:
    """Loop form of the BCL loss, written from the paper's equation."""
    v, b, _ = emb.shape
    feats = list(emb.reshape(v * b, -1)) + list(protos)
    labels = targets.repeat(v).tolist() + list(range(protos.shape[0]))
    losses = []
    for i in range(v * b):
        others = [j for j in range(len(feats)) if j != i]
        size = {k: sum(1 for j in others if labels[j] == k) for k in set(labels)}
        denom = sum(math.exp(float(feats[i] @ feats[j]) / t) / size[labels[j]] for j in others)
        pos = [j for j in others if labels[j] == labels[i]]
        losses.append(-sum(float(feats[i] @ feats[j]) / t - math.log(denom) for j in pos) / len(pos))
    return sum(losses) / len(losses)


def test_balanced_contrastive_loss_matches_loop_reference() -> None:
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(2, 5, 4), dim=2)
    protos = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    targets = torch.tensor([0, 0, 0, 1, 2])
    got = float(balanced_contrastive_loss(emb, targets, protos, 0.5))
    assert got == pytest.approx(_reference_bscl(emb, targets, protos, 0.5), rel=1e-5)


def test_bcl_model_views_and_state_dict() -> None:
    def cnn() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Dropout(0.1), nn.Linear(8, 4))

    method = METHODS.get("bcl")(feat_dim=16)
    model = method.wrap_model(cnn(), 4, [30, 10, 5, 2])
    x = torch.randn(6, 2, 3, 16, 16)
    out = model.train()(x)
    assert out.logits.shape == (6, 4) and out.all_logits.shape == (12, 4)
    assert out.embeddings.shape == (2, 6, 16) and out.prototypes.shape == (4, 16)
    loss = method.loss(out, torch.tensor([0, 0, 1, 2, 3, 0]))
    loss.backward()
    assert torch.isfinite(loss) and model.fc.weight.grad is not None
    model.eval()
    assert model(x[:, 0]).shape == (6, 4)
    twin = METHODS.get("bcl")(feat_dim=16).wrap_model(cnn(), 4, [30, 10, 5, 2])
    twin.load_state_dict(model.state_dict())
    assert torch.equal(twin.eval()(x[:, 0]), model(x[:, 0]))


def test_group_softmax_layout_and_loss_hand() -> None:
    assert groups_by_count([500, 50, 60, 3]) == [[3], [1, 2], [0]]
    method = METHODS.get("group_softmax")(groups=[[0], [1, 2]], others_ratio=100.0)
    model = method.wrap_model(nn.Sequential(nn.Linear(2, 3)), 3, [100, 20, 4])
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([0.0, 1.0, 0.5, 2.0, -1.0]))  # [others, good] [others, d1, d2]
    x, y = torch.zeros(3, 2), torch.tensor([0, 1, 2])
    out = model.train()(x)
    # group 0 (members: class 0): targets good, others, others; group 1: others, d1, d2
    g0 = (_nll([0, 1], 1) + 2 * _nll([0, 1], 0)) / 3
    g1 = (_nll([0.5, 2, -1], 0) + _nll([0.5, 2, -1], 1) + _nll([0.5, 2, -1], 2)) / 3
    assert float(method.loss(out, y).detach()) == pytest.approx(g0 + g1, rel=1e-5)
    logits = model.eval()(x)
    assert logits[0].tolist() == pytest.approx([1 - _lse([0, 1]), 2 - _lse([0.5, 2, -1]), -1 - _lse([0.5, 2, -1])],
                                               rel=1e-5)


def test_plain_posthoc_and_build_errors() -> None:
    model = nn.Sequential(nn.Linear(2, 3))
    method = build_method("plain", {"posthoc_tau": 1.0}, loss="logit_adjusted", loss_params={"tau": 1.0})
    wrapped = method.wrap_model(model, 3, COUNTS)
    x = torch.randn(4, 2)
    assert torch.allclose(wrapped.eval()(x), posthoc_logit_adjust(model(x), COUNTS))
    assert torch.equal(wrapped.train()(x), model(x))
    with pytest.raises(ConfigError, match="own loss"):
        build_method("bcl", {}, loss="focal")
    with pytest.raises(ConfigError, match="unexpected keyword"):
        build_method("bcl", {"alfa": 1.0})
    with pytest.raises(ConfigError, match="did you mean"):
        build_method("group_sotfmax")
    with pytest.raises(ConfigError, match="cover classes"):
        METHODS.get("group_softmax")(groups=[[0], [1]]).wrap_model(nn.Linear(2, 3), 3, COUNTS)


# ---------------------------------------------------------------------------------------- oversampling
def test_smote_features_counts_shape_and_range() -> None:
    g = np.random.default_rng(0)
    x = g.normal(size=(124, 8)).astype(np.float32)
    x[100:120] += 5.0
    x[120:] -= 5.0
    y = np.array([0] * 100 + [1] * 20 + [2] * 4)
    xr, yr = smote_features(x, y, "max", k=5, seed=0)
    assert xr.shape == (300, 8) and xr.dtype == np.float32 and np.bincount(yr).tolist() == [100, 100, 100]
    assert np.array_equal(xr[:124], x)
    # synthetic class-2 points interpolate between class-2 points: inside their bounding box
    new2 = xr[124:][yr[124:] == 2]
    assert (new2 >= x[120:].min(0) - 1e-5).all() and (new2 <= x[120:].max(0) + 1e-5).all()
    xt, yt = smote_features(torch.from_numpy(x), torch.from_numpy(y), {1: 30, 2: 10}, k=3)
    assert isinstance(xt, torch.Tensor) and torch.bincount(yt).tolist() == [100, 30, 10]
    one = smote_features(x[:101], y[:101], "max")  # a class with a single sample is duplicated
    assert np.bincount(one[1]).tolist() == [100, 100]


def test_deepsmote_counts_and_shape() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(18, 1, 20, 20, generator=g)
    images[12:] += 0.5  # minority classes brighter
    labels = torch.tensor([0] * 12 + [1] * 4 + [2] * 2)
    ds = DeepSMOTE(latent_dim=8, width=8, epochs=6, batch_size=8, seed=0)
    x, y = ds.fit_resample(images, labels, target_counts={1: 10, 2: 7})
    assert x.shape == (29, 1, 20, 20) and torch.bincount(y).tolist() == [12, 10, 7]
    assert torch.equal(x[:18], images)
    assert ds.history_[-1] < ds.history_[0]  # reconstruction + permutation loss went down
    assert float(x.min()) >= float(images.min()) and float(x.max()) <= float(images.max())


def test_two_views_transform() -> None:
    from PIL import Image

    from defectlab.data.transforms import PairTransform

    tf = METHODS.get("bcl")().wrap_transform(PairTransform(24, augment="basic"))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 30, 3), dtype=np.uint8))
    torch.manual_seed(0)
    views, mask = tf(img, None)
    assert views.shape == (2, 3, 24, 24) and mask.shape == (1, 24, 24)
    assert not torch.equal(views[0], views[1])  # two independent augmentation draws
