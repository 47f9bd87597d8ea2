"""The torch-free inference runtime (``defectlab.runtime``, ``defectlab-runtime``): it runs ``inspect`` and
``serve`` with torch, torchvision, scipy and matplotlib blocked, gives the ONNX engine's results, and its
numpy parts (maps back to the image, boxes, colours, preprocessing) match the implementations they replace."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from defectlab.errors import ConfigError
from defectlab.inspect.onnx_engine import providers, session
from defectlab.runtime.colormap import jet
from defectlab.runtime.geometry import map_to_original, resize_map
from defectlab.runtime.preprocess import Preprocess, to_array
from defectlab.runtime.regions import boxes_from_map
from tests.test_inspect_fixtures import detector, fitted_run

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "torchvision", "scipy", "matplotlib", "sklearn")
BLOCKER = f"""
import importlib.abc, sys
class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
sys.meta_path.insert(0, _Blocker())
"""


def run_blocked(code: str, *args: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter where importing torch (and the rest of BLOCKED) fails."""
    env = {"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code), *args], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def run(synthetic_object: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fitted_run(synthetic_object, tmp_path_factory)  # includes export_onnx(run)


def test_inspect_and_serve_without_torch(run: Path, synthetic_object: Path, tmp_path: Path) -> None:
    folder = synthetic_object / "test"
    paths = sorted(folder.rglob("*.png"))
    code = """
        import json, sys
        from fastapi.testclient import TestClient
        from defectlab.runtime.cli import main
        from defectlab.inspect import load_engine
        from defectlab.serve import ServeConfig, create_app
        run, folder, out, probe = sys.argv[1:5]
        rc = main(["inspect", run, folder, "--out", out, "--heatmaps", out + ".heat"])
        client = TestClient(create_app(run, ServeConfig(engine="onnx")))
        upload = {"file": ("p.png", open(probe, "rb").read(), "image/png")}
        served = client.post("/inspect", files=upload).json()
        preds = load_engine(run, "onnx").predict_images(sys.argv[5:], batch_size=5)
        print(json.dumps({"rc": rc, "served": served, "ready": client.get("/ready").status_code,
                          "scores": [p.score for p in preds], "defect": [p.is_defect for p in preds],
                          "boxes": [p.boxes for p in preds],
                          "loaded": sorted(m for m in sys.modules if m.partition(".")[0] in %r)}))
    """ % (BLOCKED,)
    out = tmp_path / "rt.csv"
    probe = folder / "hole" / "000.png"
    proc = run_blocked(code, str(run), str(folder), str(out), str(probe), *map(str, paths))
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["loaded"] == [] and got["rc"] == 0 and got["ready"] == 200
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == len(paths) and all(Path(r["heatmap"]).is_file() for r in rows)
    assert got["served"]["verdict"] == "defect" and got["served"]["heatmap_png"]

    # the ONNX engine as it ran before the runtime: the torch transforms, then scorer.onnx
    det = detector(run)
    sess = session(str(run / "onnx" / "scorer.onnx"))
    ref_scores, ref_boxes = [], []
    for path in paths:
        _, pils, tensors = det.prepare([path])
        scores, maps = sess.run(None, {"image": tensors[0][None].numpy()})
        pred = det.prediction(str(path), pils[0], float(scores[0]), maps[0])
        ref_scores.append(pred.score)
        ref_boxes.append([list(b) for b in pred.boxes])
    np.testing.assert_allclose(got["scores"], ref_scores, rtol=1e-5)
    assert got["defect"] == [s > det.thresholds.image for s in ref_scores]
    assert got["boxes"] == ref_boxes
    assert got["served"]["score"] == pytest.approx(ref_scores[paths.index(probe)], rel=1e-5)


def test_without_torch_the_rest_is_one_line(run: Path, tmp_path: Path) -> None:
    code = """
        import sys
        from defectlab.cli import main
        from defectlab.runtime.cli import main as runtime
        args = sys.argv[1:]
        sys.exit(runtime(args[1:]) if args[0] == "runtime" else main(args))
    """
    for args in (["runtime", "inspect", str(run), str(tmp_path), "--engine", "torch"],
                 ["anomaly", "fit", str(tmp_path), "--out", str(tmp_path / "r")],
                 ["inspect", str(run), str(tmp_path)]):  # defectlab inspect: the torch engine by default
        proc = run_blocked(code, *args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "pip install 'defectlab[full]'" in lines[0], proc.stderr
    proc = run_blocked(code, "runtime", "--help")
    assert proc.returncode == 0 and "inspect" in proc.stdout and "serve" in proc.stdout


@pytest.mark.parametrize("hw", [(64, 64), (37, 29), (185, 140), (300, 77)])
def test_resize_map_is_torchs_bilinear_bit_for_bit(hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(hw[0])
    m = (rng.random(hw, dtype=np.float32) * 40).astype(np.float32)
    for target in [(64, 64), (255, 193), (20, 300), hw]:
        ref = F.interpolate(torch.from_numpy(m)[None, None], target, mode="bilinear", align_corners=False)
        np.testing.assert_array_equal(resize_map(m, target), ref[0, 0].numpy())  # small and large outputs


def test_map_to_original_modes() -> None:
    amap = np.zeros((32, 32), dtype=np.float32)
    amap[8:24, 4:28] = 1.0  # letterbox content of a 30x90 image: rows 11..21 of the 32x32 input
    full = map_to_original(amap, (30, 90), "letterbox")
    assert full.shape == (30, 90) and full.dtype == np.float32
    assert map_to_original(amap, (40, 20), "crop").shape == (40, 20)
    with pytest.raises(ConfigError, match="unknown resize mode"):
        map_to_original(amap, (4, 4), "stretch")


def test_boxes_are_scipys_labelling() -> None:
    from scipy import ndimage

    def reference(amap: np.ndarray, thr: float) -> list[tuple[int, int, int, int]]:
        labels, n = ndimage.label(amap > thr, structure=np.ones((3, 3), dtype=bool))
        sizes = ndimage.sum_labels(np.ones_like(amap), labels, index=np.arange(1, n + 1))
        boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels)]
        return [boxes[i] for i in np.argsort(-sizes, kind="stable")] if n else []

    rng = np.random.default_rng(0)
    for i in range(150):
        h, w = rng.integers(1, 50, 2)
        amap = rng.random((h, w))
        if i % 2:
            amap = ndimage.gaussian_filter(amap, 1.5)
        thr = float(np.quantile(amap, rng.random()))
        assert boxes_from_map(amap, thr) == reference(amap, thr)
    assert boxes_from_map(np.zeros((5, 5)), 0.5) == []


def test_jet_is_matplotlibs() -> None:
    import matplotlib

    x = np.concatenate([np.random.default_rng(0).random(20000), np.linspace(0, 1, 1001)])
    for dtype in (np.float32, np.float64):
        values = x.astype(dtype)
        np.testing.assert_array_equal(jet(values), matplotlib.colormaps["jet"](values)[:, :3])


@pytest.mark.parametrize("resize", ["native", "squash", "letterbox", "crop"])
@pytest.mark.parametrize("standardize", [False, True])
def test_preprocessing_matches_the_torch_transforms(resize: str, standardize: bool) -> None:
    rng = np.random.default_rng(1)
    pre = Preprocess((48, 64), resize, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), scale=0.6,
                     standardize=standardize)
    transform = pre.transform()
    for size in [(90, 60), (40, 70), (64, 48)]:
        img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
        ref = transform(img, None)[0].numpy()
        got = to_array(img, pre)
        assert got.shape == ref.shape and got.dtype == np.float32
        diff = np.abs(got - ref)
        if resize == "native" or standardize:  # the same Pillow resize / float resizes: rounding only
            assert diff.max() < 1e-4
        else:  # Pillow's and torchvision's 8-bit antialiased resizes round differently: a grey level at most
            level = diff * np.asarray(pre.std, dtype=np.float32)[:, None, None] * 255  # in grey levels
            assert level.max() < 1.001 and level.mean() < 0.3


def test_onnx_devices() -> None:
    assert providers("cpu") == ["CPUExecutionProvider"]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert providers("auto") == ["CPUExecutionProvider"]
        with pytest.raises(ConfigError, match="no CUDA provider"):
            providers("cuda:0")
    with pytest.raises(ConfigError, match="--engine torch"):
        providers("mps")
    with pytest.raises(ConfigError, match="unknown"):
        providers("tpu")


def test_torch_engine_device_option(run: Path, synthetic_object: Path, tmp_path: Path) -> None:
    from defectlab.cli import main
    from defectlab.inspect import load_engine

    paths = sorted((synthetic_object / "test" / "hole").glob("*.png"))[:4]
    a = detector(run).predict_images(paths)
    b = load_engine(run, "torch", "cpu").predict_images(paths)
    assert [p.score for p in a] == [p.score for p in b]  # bit for bit
    assert all(np.array_equal(p.anomaly_map, q.anomaly_map) for p, q in zip(a, b, strict=True))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            load_engine(run, "torch", "cuda")
        assert main(["inspect", str(run), str(tmp_path), "--device", "cuda:1"]) == 2
