"""Inspection bundles and the few-shot head on a synthetic dataset: verdict and type on planted
defects, k = 0 equal to the detector, refusal of inconsistent or tampered parts, save -> load ->
predict identical, CLI, serve."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from defectlab.anomaly.detector import Detector
from defectlab.cli import main
from defectlab.errors import BadInputError
from defectlab.verdict import Bundle, RefineConfig, build_bundle, load_refiner, refine_run

RUN_CONFIG = {
    "model": "patchcore",
    "image_size": 128,
    "resize": "squash",
    "holdout": 0.25,
    "options": {"coreset_ratio": 0.1},
}


@pytest.fixture(scope="module")
def parts(
    synthetic_object: Path, tmp_path_factory: pytest.TempPathFactory, one_torch_thread
) -> dict[str, Path]:
    """A detector run, a 2-shot head, a 0-shot head and a bundle of the detector + the 2-shot head."""
    from defectlab.anomaly.runner import RunConfig, fit_detector
    from defectlab.config import from_dict, to_dict, write_yaml

    root = tmp_path_factory.mktemp("verdict")
    cfg = from_dict(RunConfig, {"data": str(synthetic_object), **RUN_CONFIG})
    run = root / "run"
    fit_detector(cfg).save(run)
    write_yaml(run / "config.yaml", to_dict(cfg))
    refine_run(synthetic_object, run, root / "k2", RefineConfig(shots=2, steps=250))
    refine_run(synthetic_object, run, root / "k0", RefineConfig(shots=0))
    build_bundle(run, root / "bundle", refine=root / "k2")
    return {
        "root": root,
        "run": run,
        "k2": root / "k2",
        "k0": root / "k0",
        "bundle": root / "bundle",
        "data": synthetic_object,
    }


def held_out(p: dict[str, Path]) -> list[Path]:
    used = set(json.loads((p["k2"] / "shots.json").read_text())["images"])
    return [
        q for q in sorted((p["data"] / "test").rglob("*.png")) if "mask" not in q.name and str(q) not in used
    ]


def test_planted_defects_get_verdict_and_type(parts: dict[str, Path]) -> None:
    images = held_out(parts)
    preds = Bundle.load(parts["bundle"]).predict_images(images)
    truth = [q.parent.name for q in images]
    verdicts = [p.extra["verdict"] for p in preds]
    assert [v == "ok" for v in verdicts] == [t == "good" for t in truth]
    typed = [(t, p.extra) for t, p in zip(truth, preds, strict=True) if t != "good"]
    top1 = np.mean([max(e["probabilities"], key=e["probabilities"].get) == t for t, e in typed])
    assert top1 >= 0.6, f"top-1 type accuracy {top1:.2f} on planted defects (chance 0.25)"
    for t, e in typed:  # a named type is the top one; regions carry box, mask, score
        assert e["type"] in (t, "unknown") or e["probabilities"][e["type"]] >= 0.5
        assert len(e["probabilities"]) <= 3 and e["regions"]
        r = e["regions"][0]
        x0, y0, x1, y1 = r["box"]
        assert r["mask"]["size"] == [y1 - y0, x1 - x0] and sum(r["mask"]["counts"][1::2]) == r["area"]
        assert {"anomaly_score", "anomaly_threshold", "refined_score", "refined_threshold"} <= set(
            e["scores"]
        )


def test_zero_shots_is_the_detector_bit_for_bit(parts: dict[str, Path]) -> None:
    build_bundle(parts["run"], parts["root"] / "b0", refine=parts["k0"])
    images = held_out(parts)[:6]
    det = Detector.load(parts["run"]).predict_images(images)
    b0 = Bundle.load(parts["root"] / "b0").predict_images(images)
    for d, b in zip(det, b0, strict=True):
        assert np.array_equal(d.anomaly_map, b.anomaly_map) and d.score == b.score
        assert d.is_defect == b.is_defect
    head = load_refiner(parts["k0"])
    x = torch.rand(2, 3, 64, 64)
    emb = torch.rand(2, head.in_channels - 1, 8, 8)
    from defectlab.anomaly.base import AnomalyOutput

    out = AnomalyOutput(torch.rand(2), torch.rand(2, 64, 64))
    assert head.refine(emb, out, 1.0)[0] is out.maps and x.shape[0] == 2


def test_refiner_fit_depends_on_its_seed_only(one_torch_thread) -> None:
    from defectlab.verdict.fewshot import Refiner, grid_target

    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(9, 12, 12, generator=gen) for _ in range(4)]
    mask = np.zeros((96, 96), bool)
    mask[30:60, 30:60] = True
    ys = [grid_target(mask, (12, 12), 1 + i % 2, 2) for i in range(3)] + [grid_target(mask, (12, 12), 0, 2)]
    cfg = RefineConfig(steps=20, seed=3)
    torch.manual_seed(1)
    a = Refiner(9, ["a", "b"]).fit(xs, ys, cfg, shots=1)
    torch.manual_seed(2)
    torch.rand(100)  # another RNG history before the head is built
    b = Refiner(9, ["a", "b"]).fit(xs, ys, cfg, shots=1)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    c = Refiner(9, ["a", "b"]).fit(xs, ys, RefineConfig(steps=20, seed=4), shots=1)
    assert not torch.equal(a.net[0].weight, c.net[0].weight)


def test_refine_warns_without_held_out_images(parts: dict[str, Path], tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """An anomaly run fitted without a hold-out leaves the refined threshold only images the detector was
    fitted on: refine says so."""
    from defectlab.config import load_yaml, write_yaml

    run = tmp_path / "run"
    shutil.copytree(parts["run"], run)
    write_yaml(run / "config.yaml", {**load_yaml(run / "config.yaml"), "holdout": 0.0})
    with caplog.at_level("WARNING", logger="defectlab.verdict.refine_run"):
        refine_run(parts["data"], run, tmp_path / "k1", RefineConfig(shots=1, steps=5))
    assert "held out no good images" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="defectlab.verdict.refine_run"):
        refine_run(parts["data"], parts["run"], tmp_path / "k1b", RefineConfig(shots=1, steps=5))
    assert "held out no good images" not in caplog.text


def test_refined_threshold_holds_with_few_held_out_images() -> None:
    """Thresholds from 20 held-out maxima drawn from a known distribution (logit-normal, as the refined
    maxima roughly are): the rule's false-alarm rate on that distribution stays near the 1% asked for, where
    the empirical 0.99 quantile of 20 scores (about their maximum) lets through several times more."""
    from statistics import NormalDist

    from defectlab.metrics import threshold_from_good
    from defectlab.verdict.fewshot import refined_threshold

    rng = np.random.default_rng(0)
    mu, sd = 0.3, 0.5  # logits of good images' maxima: probabilities around 0.57

    def false_alarms(t: float) -> float:
        return 1 - NormalDist(mu, sd).cdf(float(np.log(t / (1 - t))))

    rule, empirical = [], []
    for _ in range(400):
        s = 1 / (1 + np.exp(-rng.normal(mu, sd, 20)))
        rule.append(false_alarms(refined_threshold(s, 0.99)))
        empirical.append(false_alarms(threshold_from_good(s, 0.99)))
        assert refined_threshold(s, 0.99) >= max(threshold_from_good(s, 0.99), 0.5)
    assert np.mean(rule) < 0.02 < np.mean(empirical)
    assert refined_threshold([0.1, 0.2, 0.15], 0.99, floor=0.5) == 0.5  # never below "as likely as background"


def test_save_load_predict_identical(parts: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "moved"
    shutil.copytree(parts["bundle"], copy)
    images = held_out(parts)[:8]
    a = Bundle.load(parts["bundle"]).predict_images(images)
    b = Bundle.load(copy).predict_images(images)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.anomaly_map, y.anomaly_map)
        assert json.dumps(x.extra, sort_keys=True) == json.dumps(y.extra, sort_keys=True)


@pytest.mark.parametrize(
    "part", ["refine/refine.safetensors", "anomaly/model.safetensors", "anomaly/detector.json"]
)
def test_tampered_part_is_refused(parts: dict[str, Path], tmp_path: Path, part: str) -> None:
    copy = tmp_path / "b"
    shutil.copytree(parts["bundle"], copy)
    target = copy / part
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(BadInputError, match="checksum mismatch") as err:
        Bundle.load(copy)
    assert part.split("/")[-1] in str(err.value) and "\n" not in str(err.value)


def _edit_refine(src: Path, dst: Path, key: str, value) -> Path:  # type: ignore[no-untyped-def]
    shutil.copytree(src, dst)
    meta = json.loads((dst / "refine.json").read_text())
    meta["preprocess"][key] = value
    (dst / "refine.json").write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("image_size", [96, 96], "image size"),
        ("standardize", False, "preprocessing"),
        ("resize", "letterbox", "preprocessing"),
    ],
)
def test_parts_that_disagree_are_refused(
    parts: dict[str, Path], tmp_path: Path, key: str, value, words: str
) -> None:  # type: ignore[no-untyped-def]
    head = _edit_refine(parts["k2"], tmp_path / "head", key, value)
    meta = json.loads((parts["run"] / "detector.json").read_text())
    if meta["preprocess"][key] == value:
        pytest.skip("the detector already has this value")
    with pytest.raises(BadInputError, match=f"disagree on {words}") as err:
        build_bundle(parts["run"], tmp_path / "out", refine=head)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_classes_that_disagree_are_refused(parts: dict[str, Path], tmp_path: Path) -> None:
    cls_run = tmp_path / "cls"
    (cls_run / "a").mkdir(parents=True)
    torch.save({"config": {"classes": ["good", "scratch", "hole", "dent"]}}, cls_run / "a" / "best.pt")
    with pytest.raises(BadInputError, match="disagree on classes"):
        build_bundle(parts["run"], tmp_path / "out", refine=parts["k2"], classify_run=cls_run, attempt="a")
    assert not (tmp_path / "out").exists()


def test_cli_refine_bundle_inspect(
    parts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bundle = tmp_path / "bundle"
    assert (
        main(
            [
                "bundle",
                "build",
                "--anomaly-run",
                str(parts["run"]),
                "--refine",
                str(parts["k2"]),
                "--out",
                str(bundle),
            ]
        )
        == 0
    )
    folder = tmp_path / "incoming"
    folder.mkdir()
    for q in held_out(parts)[::4]:
        shutil.copy(q, folder / f"{q.parent.name}_{q.name}")
    out = tmp_path / "res.csv"
    assert main(["inspect", str(bundle), str(folder), "--out", str(out)]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {"type", "probabilities", "regions"} <= set(rows[0])
    for r in rows:
        assert (r["verdict"] == "good") == r["path"].startswith("good_")
        assert (r["type"] == "") == (r["verdict"] == "good")
    # bad input: one line naming the file, exit code 2, nothing written
    capsys.readouterr()
    assert (
        main(["bundle", "build", "--anomaly-run", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and not (tmp_path / "x").exists()
    assert (
        main(
            [
                "refine",
                str(parts["data"]),
                "--anomaly-run",
                str(parts["run"]),
                "--shots",
                "99",
                "--out",
                str(tmp_path / "h"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "h" / "refine.json").exists()


def test_serve_returns_the_verdict(parts: dict[str, Path]) -> None:
    from fastapi.testclient import TestClient

    from defectlab.serve.app import create_app

    client = TestClient(create_app(parts["bundle"]))
    image = next(q for q in held_out(parts) if q.parent.name == "scratch")
    r = client.post("/inspect", files={"file": (image.name, image.read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["verdict"] == "defect" and body["type"] and body["regions"] and body["scores"]
    assert client.get("/model").json()["bundle"]["classes"] == ["contamination", "crack", "hole", "scratch"]


def test_region_guided_classifier_types_each_region(parts: dict[str, Path], tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A region-pooled classifier in a bundle classifies each region the rule found (its mask), not the
    whole image; a classifier taught another detector's regions is named in a warning."""
    from defectlab.classify.data import cache_images
    from defectlab.classify.models import ModelConfig
    from defectlab.classify.probe import ProbeFitter
    from defectlab.classify.train import TrainConfig
    from defectlab.data.index import open_dataset

    recs = [r for r in open_dataset(parts["data"]).records if r.split == "test" and r.defect_type != "good"]
    classes = sorted({r.defect_type for r in recs})
    images = cache_images(recs, {c: i for i, c in enumerate(classes)}, size=64, input="pooled")
    ProbeFitter(ModelConfig("mobilenet_v2", weights="imagenet"), TrainConfig(image_size=64, input="pooled",
                                                                             probe="linear"),
                classes, tmp_path / "cls" / "pooled", progress=False).fit(images, images)
    ckpt = tmp_path / "cls" / "pooled" / "best.pt"
    with caplog.at_level("WARNING", logger="defectlab.verdict.bundle"):
        build_bundle(parts["run"], tmp_path / "b", classify_run=tmp_path / "cls", attempt="pooled")
        assert not caplog.records  # taught on masks only: nothing to say
        state = torch.load(ckpt, weights_only=True)
        for learned, warned in ((parts["run"], False), (tmp_path / "another_run", True)):
            state["config"]["train"]["regions_from"] = str(learned)
            torch.save(state, ckpt)
            caplog.clear()
            build_bundle(parts["run"], tmp_path / "b2", classify_run=tmp_path / "cls", attempt="pooled")
            assert bool(caplog.records) == warned and (not warned or "another_run" in caplog.text)
    bundle = Bundle.load(tmp_path / "b")
    cls = bundle.classifier
    assert cls.region_guided
    calls = []
    real = cls.predict_regions

    def spy(image, boxes, masks=None):  # type: ignore[no-untyped-def]
        calls.append((boxes, masks))
        return real(image, boxes, masks)

    cls.predict_regions = spy
    cls.predict = None  # a region-guided classifier must not be asked about whole images
    defective = [q for q in held_out(parts) if q.parent.name != "good"][:4]
    for name, pil, v, _ in bundle.verdicts(defective):
        assert v.verdict == "defect" and v.regions, name
        boxes, _ = calls.pop(0)  # one call per image, every region in it
        assert [(x, y, x + w, y + h) for x, y, w, h in boxes] == [r.box for r in v.regions]
        r = v.regions[0]
        full = np.zeros((pil.height, pil.width), bool)
        x0, y0, x1, y1 = r.box
        full[y0:y1, x0:x1] = r.mask
        want = real(pil, [(x0, y0, x1 - x0, y1 - y0)], [full])[0].probabilities
        top = sorted(want.items(), key=lambda kv: -kv[1])[:3]
        assert r.probabilities == pytest.approx(dict(top), abs=1e-5)
    assert not calls
