"""``inspect --executor ray``: a local 2-CPU Ray, an actor pool loading the run once per actor, gives the
local executor's CSV row for row, including error rows and heatmaps, and resumes a killed run's CSV."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from PIL import Image

from defectlab.cli import main
from defectlab.errors import ConfigError
from defectlab.inspect import inspect_folder
from tests.test_inspect_fixtures import copy_images, fitted_run, sample_images

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # starting Ray and two actors takes ~20-60 s on a busy 2-core machine


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (2 CPUs, no dashboard); skip cleanly when it cannot start."""
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - no Ray here (sandbox, no shared memory): skip, don't fail
        pytest.skip(f"ray cannot start here: {type(exc).__name__}: {exc}")
    yield
    ray.shutdown()


def test_ray_csv_equals_local_and_resumes(synthetic_object: Path, tmp_path_factory: pytest.TempPathFactory,
                                          tmp_path: Path, local_ray) -> None:
    run = fitted_run(synthetic_object, tmp_path_factory)
    folder = tmp_path / "incoming"
    copy_images(sample_images(synthetic_object), folder)
    for i, p in enumerate(sorted((synthetic_object / "test").rglob("*.png"))[:9]):
        shutil.copy(p, folder / f"more_{i}.png")
    (folder / "corrupt.png").write_bytes(b"not a PNG" * 20)  # an error row, in its place
    (folder / "sub").mkdir()
    Image.open(folder / "good_b.png").save(folder / "sub" / "good_c.png")

    local = inspect_folder(run, folder, tmp_path / "local.csv", heatmaps=tmp_path / "heat_local",
                           batch_size=3, progress=False)
    assert local.inspected == 14 and local.errors == 1
    remote = inspect_folder(run, folder, tmp_path / "ray.csv", heatmaps=tmp_path / "heat_ray", batch_size=3,
                            progress=False, executor="ray", workers=2)
    expected = (tmp_path / "local.csv").read_text()
    assert (tmp_path / "ray.csv").read_text().replace("heat_ray", "heat_local") == expected
    assert (remote.inspected, remote.errors, remote.defects) == (local.inspected, local.errors, local.defects)
    assert sorted(p.name for p in (tmp_path / "heat_ray").rglob("*.png")) == \
        sorted(p.name for p in (tmp_path / "heat_local").rglob("*.png"))

    # a run killed after 7 rows (and half of the 8th) resumes on Ray to the same CSV, through the CLI
    lines = expected.splitlines(keepends=True)
    resumed = tmp_path / "resumed.csv"
    resumed.write_text("".join(lines[:8]) + lines[8][:10])
    assert main(["inspect", str(run), str(folder), "--out", str(resumed), "--batch-size", "3",
                 "--executor", "ray", "--workers", "2"]) == 0
    assert rows_without_heatmaps(resumed) == rows_without_heatmaps(tmp_path / "local.csv")


def rows_without_heatmaps(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return [dict(r, heatmap="") for r in csv.DictReader(fh)]


def test_ray_executor_needs_the_run_folder(synthetic_object: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown executor 'spark'"):
        inspect_folder("RUN", tmp_path, tmp_path / "x.csv", executor="spark")
    with pytest.raises(ConfigError, match="give the run folder"):
        inspect_folder(object(), tmp_path, tmp_path / "x.csv", executor="ray")  # type: ignore[arg-type]
