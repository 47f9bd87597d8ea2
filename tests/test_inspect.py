"""Batch inspection: verdicts, boxes, heatmaps, unreadable files listed, resume, kill safety, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectlab.cli import main
from defectlab.errors import BadInputError
from defectlab.inspect import COLUMNS, inspect_folder
from tests.test_inspect_fixtures import copy_images, detector, fitted_run, sample_images


@pytest.fixture(scope="module")
def run(synthetic_object: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fitted_run(synthetic_object, tmp_path_factory)


@pytest.fixture()
def folder(synthetic_object: Path, tmp_path: Path) -> Path:
    """Two good and two defective images, a non-image with an image name, a truncated JPEG and a text
    file (ignored: not an image name), one image in a subfolder."""
    f = tmp_path / "incoming"
    copy_images(sample_images(synthetic_object), f)
    (f / "corrupt.png").write_bytes(b"this is not a PNG at all" * 10)
    jpg = f / "sub" / "truncated.jpg"
    jpg.parent.mkdir()
    Image.open(f / "hole.png").convert("RGB").save(jpg, quality=95)
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    Image.open(f / "good_b.png").save(f / "sub" / "good_c.png")
    (f / "notes.txt").write_text("not an image")
    return f


def rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        out = list(reader)
    paths = [r["path"] for r in out]
    assert len(paths) == len(set(paths)), "an image is listed twice"
    return {r["path"]: r for r in out}


class CountingEngine:
    """The real detector, counting the images it is asked to score (and optionally dying mid-run)."""

    def __init__(self, det, die_on_call: int | None = None) -> None:  # type: ignore[no-untyped-def]
        self.det, self.calls, self.images, self.die_on_call = det, 0, 0, die_on_call

    def predict_images(self, images, *, batch_size=8):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == self.die_on_call:
            raise KeyboardInterrupt  # what Ctrl-C / a kill looks like to the loop
        self.images += len(images)
        return self.det.predict_images(images, batch_size=batch_size)

    def info(self):  # type: ignore[no-untyped-def]
        return self.det.info()


def test_inspect_folder_verdicts_errors_heatmaps(run: Path, folder: Path, tmp_path: Path) -> None:
    out, heat = tmp_path / "results.csv", tmp_path / "heat"
    s = inspect_folder(run, folder, out, heatmaps=heat, batch_size=2, progress=False)
    r = rows(out)
    assert set(r) == {"good_a.png", "good_b.png", "hole.png", "scratch.png", "corrupt.png",
                      "sub/truncated.jpg", "sub/good_c.png"}
    assert (s.total, s.skipped, s.inspected, s.errors) == (7, 0, 5, 2)
    assert r["corrupt.png"]["verdict"] == "error" and "not an image" in r["corrupt.png"]["error"]
    assert r["sub/truncated.jpg"]["verdict"] == "error" and "truncated" in r["sub/truncated.jpg"]["error"]
    for name in ("good_a.png", "good_b.png", "sub/good_c.png"):
        assert r[name]["verdict"] == "good", (name, r[name])
        assert float(r[name]["score"]) <= float(r[name]["threshold"])
        assert json.loads(r[name]["boxes"]) == []
    for name in ("hole.png", "scratch.png"):
        assert r[name]["verdict"] == "defect", (name, r[name])
        boxes = json.loads(r[name]["boxes"])
        assert boxes and int(r[name]["n_boxes"]) == len(boxes)
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
    # heatmap overlays: one PNG per inspected image, at the image's size, coloured (not the plain image)
    png = Path(r["hole.png"]["heatmap"])
    assert png.is_file() and png.parent == heat
    over = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    orig = np.asarray(Image.open(folder / "hole.png").convert("RGB"), dtype=np.int16)
    assert over.shape == orig.shape and np.abs(over - orig).mean() > 5
    assert r["corrupt.png"]["heatmap"] == "" and len(list(heat.rglob("*.png"))) == 5
    # same scores as the detector called directly
    direct = detector(run).predict_images([folder / "hole.png"])[0]
    assert abs(float(r["hole.png"]["score"]) - direct.score) < 1e-4


def test_resume_skips_done_and_survives_a_kill(run: Path, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    det = detector(run)
    killed = CountingEngine(det, die_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        inspect_folder(killed, folder, out, batch_size=2, progress=False)
    first = rows(out)  # the batch before the kill is on disk
    assert len(first) == 2 and killed.calls == 2  # one full batch written, the second lost
    with open(out, "a") as fh:  # a kill in the middle of writing a row leaves half a line
        fh.write("good_b.png,defe")
    engine = CountingEngine(det)
    s = inspect_folder(engine, folder, out, batch_size=2, progress=False)
    assert s.skipped == len(first) and s.inspected + s.errors == 7 - len(first)
    again = rows(out)
    assert len(again) == 7 and engine.images == 5 - sum(v["verdict"] != "error" for v in first.values())
    # a third run with nothing new does no inference at all
    idle = CountingEngine(det)
    s = inspect_folder(idle, folder, out, batch_size=2, progress=False)
    assert (s.skipped, s.inspected, idle.calls) == (7, 0, 0)
    # a new image arrives: only it is inspected; --retry-errors tries the two error rows again
    Image.open(folder / "good_a.png").save(folder / "late.png")
    late = CountingEngine(det)
    s = inspect_folder(late, folder, out, batch_size=2, progress=False, retry_errors=True)
    assert late.images == 1 and s.errors == 2 and len(rows(out)) == 8


def test_foreign_csv_and_missing_folder_refused(run: Path, folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(BadInputError, match="not a defectlab inspect CSV"):
        inspect_folder(detector(run), folder, other, progress=False)
    half = tmp_path / "half.csv"  # killed while writing the header line
    half.write_text(",".join(COLUMNS)[:12])
    s = inspect_folder(detector(run), folder, half, progress=False)
    assert s.skipped == 0 and len(rows(half)) == 7
    lone = tmp_path / "lone.csv"  # one line without newline that is not ours: left alone
    lone.write_text("hello")
    with pytest.raises(BadInputError, match="not a defectlab inspect CSV"):
        inspect_folder(detector(run), folder, lone, progress=False)
    assert lone.read_text() == "hello"
    with pytest.raises(BadInputError, match="not a folder"):
        inspect_folder(detector(run), tmp_path / "nope", tmp_path / "x.csv", progress=False)


def test_cli_inspect(run: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.csv"
    assert main(["inspect", str(run), str(folder), "--out", str(out), "--batch-size", "3"]) == 0
    assert "7 images: 0 already" in capsys.readouterr().out
    assert len(rows(out)) == 7
    assert main(["inspect", str(run), str(folder), "--out", str(out)]) == 0
    assert "7 already in" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "no_run"), str(folder), "--out", str(out)]) == 2
    assert "not a detector run folder" in capsys.readouterr().err


def test_poison_images_become_error_rows_and_are_not_retried(run: Path, folder: Path, tmp_path: Path) -> None:
    """An image over the limit in the middle of a batch: an error row, the rest of its batch inspected. An
    image a killed run died on alone is listed as an error, not tried again; a batch it died on is taken
    one image at a time."""
    Image.new("L", (500, 500), 128).save(folder / "hole2_poison.png")  # 250,000 px > max_pixels below
    out = tmp_path / "r.csv"
    s = inspect_folder(detector(run), folder, out, batch_size=8, progress=False, max_pixels=100_000)
    r = rows(out)
    assert len(r) == 8 and (s.inspected, s.errors, s.engine_errors) == (5, 3, 0) and s.failed is None
    assert r["hole2_poison.png"]["verdict"] == "error" and "the limit is 100000" in r["hole2_poison.png"]["error"]
    assert r["hole.png"]["verdict"] == "defect" and r["good_a.png"]["verdict"] == "good"
    assert not (tmp_path / "r.csv.inflight").exists()  # a run that ends cleanly leaves no marker

    # a run killed while one image was in flight alone: that image is an error row, never re-decoded
    out2 = tmp_path / "r2.csv"
    (tmp_path / "r2.csv.inflight").write_text(json.dumps({"paths": ["hole.png"], "alone": True}))
    engine = CountingEngine(detector(run))
    s = inspect_folder(engine, folder, out2, batch_size=8, progress=False)
    r = rows(out2)
    assert len(r) == 8 and r["hole.png"]["verdict"] == "error" and "killed" in r["hole.png"]["error"]
    assert engine.images == 5  # the 6 readable images minus hole.png

    # killed with a whole batch in flight: those images go one at a time first (so a crash names one)
    out3 = tmp_path / "r3.csv"
    (tmp_path / "r3.csv.inflight").write_text(json.dumps({"paths": ["good_a.png", "scratch.png"],
                                                          "alone": False}))
    engine = CountingEngine(detector(run))
    s = inspect_folder(engine, folder, out3, batch_size=8, progress=False)
    assert len(rows(out3)) == 8 and s.inspected == 6 and engine.calls == 3  # 2 singles + one batch of 4


class BrokenEngine(CountingEngine):
    def predict_images(self, images, *, batch_size=8):  # type: ignore[no-untyped-def]
        raise RuntimeError("CUDA error: device-side assert (simulated)")


def test_engine_errors_and_all_failed_exit_nonzero(run: Path, folder: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    s = inspect_folder(BrokenEngine(detector(run)), folder, tmp_path / "b.csv", batch_size=3, progress=False)
    assert s.engine_errors == 5 and s.failed and "inference engine" in s.failed
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.png").write_bytes(b"garbage")
    assert main(["inspect", str(run), str(bad), "--out", str(tmp_path / "bad.csv")]) == 1
    err = capsys.readouterr().err
    assert "every image failed (3 error rows" in err


def test_run_folder_paths_stay_inside_and_broken_models_are_one_line(
        run: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from defectlab.anomaly.detector import sha256_file

    for case in ("escape", "absolute", "truncated", "threshold"):
        bad = tmp_path / case
        shutil.copytree(run, bad)
        meta = json.loads((bad / "detector.json").read_text())
        if case == "escape":
            meta["model_file"] = "../../../../etc/passwd"
        elif case == "absolute":
            meta["model_file"] = str(run / "model.safetensors")
        elif case == "truncated":  # truncated, and the recorded hash rewritten to match
            model = bad / "model.safetensors"
            model.write_bytes(model.read_bytes()[: model.stat().st_size // 3])
            meta["model_sha256"] = sha256_file(model)
        else:
            meta["thresholds"]["image"] = "high"
        (bad / "detector.json").write_text(json.dumps(meta))
        for engine in ("torch", "onnx"):
            code = main(["inspect", str(bad), str(folder), "--out", str(tmp_path / f"{case}.csv"),
                         "--engine", engine])
            err = capsys.readouterr().err.strip()
            assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (case, engine, err)
            expected = {"escape": "outside the run folder", "absolute": "must be a path inside the run folder",
                        "truncated": "cannot restore the detector", "threshold": "must be a finite number"}[case]
            if case == "truncated" and engine == "onnx":  # the ONNX engine never reads the tensor file
                expected = "the ONNX export is stale"
            assert expected in err, (case, engine, err)
