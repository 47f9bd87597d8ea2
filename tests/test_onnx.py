"""ONNX export of a fitted PatchCore run: the onnxruntime path gives the torch path's scores (1e-4)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from defectlab.cli import main
from defectlab.errors import BadInputError
from defectlab.export.onnx import export_onnx
from defectlab.inspect import load_engine
from defectlab.inspect.onnx_engine import OnnxDetector
from defectlab.inspect.version import engine_version
from tests.test_inspect_fixtures import detector, fitted_run


@pytest.fixture(scope="module")
def run(synthetic_object: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fitted_run(synthetic_object, tmp_path_factory)  # includes export_onnx(run)


def test_export_files_and_graph(run: Path) -> None:
    meta = json.loads((run / "onnx" / "onnx.json").read_text())
    assert meta["method"] == "patchcore" and meta["features"]["layers"] == ["_blocks.4", "_blocks.10"]
    assert meta["scorer"]["max_abs_diff_scores"] < 1e-4 and meta["features"]["max_abs_diff"] < 1e-4
    for name in ("features.onnx", "scorer.onnx"):
        model = onnx.load(str(run / "onnx" / name))
        onnx.checker.check_model(model)
        assert model.graph.input[0].name == "image"
    ops = {n.op_type for n in onnx.load(str(run / "onnx" / "scorer.onnx")).graph.node}
    assert {"MatMul", "ArgMin", "TopK", "Softmax", "Conv"} <= ops  # the whole scorer, not just features


def test_onnx_scores_equal_torch(run: Path, synthetic_object: Path) -> None:
    paths = sorted((synthetic_object / "test").rglob("*.png"))
    torch_preds = detector(run).predict_images(paths, batch_size=5)
    onnx_det = load_engine(run, "onnx")
    assert isinstance(onnx_det, OnnxDetector)
    onnx_preds = onnx_det.predict_images(paths, batch_size=5)  # batch size other than the export's
    ts = np.array([p.score for p in torch_preds])
    os_ = np.array([p.score for p in onnx_preds])
    np.testing.assert_allclose(os_, ts, rtol=1e-5)  # float32 sums in another order
    assert [p.is_defect for p in torch_preds] == [p.is_defect for p in onnx_preds]
    for a, b in zip(torch_preds, onnx_preds, strict=True):
        np.testing.assert_allclose(b.anomaly_map, a.anomaly_map, rtol=1e-5, atol=1e-4)
    assert onnx_det.info()["onnx"]["scorer"]["file"] == "scorer.onnx"
    assert engine_version(onnx_det) == engine_version(detector(run))  # one model, one version, any engine


def test_inspect_engine_onnx_matches_torch(run: Path, synthetic_object: Path, tmp_path: Path) -> None:
    folder = synthetic_object / "test"
    out_t, out_o = tmp_path / "t.csv", tmp_path / "o.csv"
    assert main(["inspect", str(run), str(folder), "--out", str(out_t)]) == 0
    assert main(["inspect", str(run), str(folder), "--out", str(out_o), "--engine", "onnx"]) == 0
    rt = {r["path"]: r for r in csv.DictReader(open(out_t))}
    ro = {r["path"]: r for r in csv.DictReader(open(out_o))}
    assert rt.keys() == ro.keys() and len(rt) == 32
    for k in rt:
        assert float(ro[k]["score"]) == pytest.approx(float(rt[k]["score"]), rel=1e-5, abs=2e-4)  # CSV: 4 decimals
        assert rt[k]["verdict"] == ro[k]["verdict"]


def test_cli_export_and_stale_export_refused(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exp"
    assert main(["export", "onnx", str(run), "--out", str(out)]) == 0
    assert "scorer: max |onnx - torch|" in capsys.readouterr().out
    meta = json.loads((out / "onnx.json").read_text())
    meta["model_sha256"] = "0" * 64  # as if the run had been re-fitted after the export
    (out / "onnx.json").write_text(json.dumps(meta))
    with pytest.raises(BadInputError, match="stale"):
        OnnxDetector.load(run, onnx_dir=out)
    with pytest.raises(BadInputError, match="no ONNX export"):
        OnnxDetector.load(run, onnx_dir=tmp_path / "nothing")


def test_export_refuses_a_non_run(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="not a detector run folder"):
        export_onnx(tmp_path)


def test_blocked_bank_search_is_one_argmin() -> None:
    """The exported scorer's search in blocks of bank rows picks what one argmin over the whole bank picks,
    ties included (the first row), across several blocks."""
    import torch

    from defectlab.export.onnx import BANK_CHUNK, nearest_rows

    g = torch.Generator().manual_seed(0)
    bank = torch.randn(2 * BANK_CHUNK + 77, 8, generator=g)
    bank[BANK_CHUNK + 5] = bank[3]  # a tie across blocks: row 3 must win
    q = torch.cat([torch.randn(2, 50, 8, generator=g), bank[3].expand(2, 1, 8)], dim=1)
    bank_sq = (bank * bank).sum(-1)
    expected = (bank_sq - 2 * (q @ bank.T)).argmin(dim=-1)
    got = nearest_rows(q, bank, bank_sq)
    assert torch.equal(got, expected) and (got[:, -1] == 3).all()
