"""Where ``inspect`` runs its batches: ``local`` (this process) or ``ray`` (an actor pool on a Ray cluster).

``inspect_folder`` cuts the images to inspect into units (batches of ``batch_size`` files, in file order)
and writes each unit's CSV rows as soon as the unit and all units before it are done; an executor only
turns units into rows. ``local`` is the loop in ``defectlab.inspect.batch`` (decoding of the next batch
overlapping inference). ``ray`` runs the same per-unit work (:func:`defectlab.inspect.batch._batch_rows`:
decode, predict, heatmap PNG) as Ray Data ``map_batches`` over an actor pool: every actor loads the run's
engine (torch or ONNX) once and then takes unit after unit; results come back in unit order
(``preserve_order``), so the CSV is row for row the local executor's, and a killed run resumes from the
CSV the same way.

Without ``address`` a local Ray is started for the run (``num_cpus`` = this machine's cores; no dashboard)
and stopped afterwards; with ``address`` (``ray://host:10001`` or
``host:6379`` or ``auto``) the run joins that cluster. Heatmaps are written by the workers: on a cluster of
several machines ``--heatmaps`` must be a folder they all see (a shared file system).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from defectlab.errors import ConfigError
from defectlab.ray_pool import ordered_map, ray_session

log = logging.getLogger(__name__)
EXECUTORS = ("local", "ray")


def check_executor(name: str) -> str:
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor '{name}'; known: {', '.join(EXECUTORS)}")
    return name


@dataclass(frozen=True)
class UnitJob:
    """Everything a worker needs to turn a unit (image paths relative to ``folder``) into CSV rows."""

    run: str
    engine: str
    folder: str
    heat_dir: str | None
    max_pixels: int
    max_model_pixels: int | None = None
    threads: int = 0  # torch threads per worker; 0: the driver's own count, so that scores match bit for bit

    def rows(self, model: Any, rel_paths: list[str]) -> list[dict]:
        from defectlab.inspect.batch import _batch_rows, _load

        folder = Path(self.folder)
        paths = [folder / p for p in rel_paths]
        loaded = [_load(model, p, self.max_pixels) for p in paths]
        heat = Path(self.heat_dir) if self.heat_dir is not None else None
        return _batch_rows(model, folder, paths, loaded, heat)


class _InspectActor:
    """One Ray actor: loads the engine once, then scores unit after unit."""

    def __init__(self, job: UnitJob) -> None:
        import torch

        from defectlab.inspect.engine import load_engine

        torch.set_num_threads(job.threads)  # float sums depend on the thread split: use the driver's
        self.job = job
        self.model = load_engine(job.run, job.engine)
        if job.max_model_pixels is not None:
            self.model.max_model_pixels = job.max_model_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [json.dumps(self.job.rows(self.model, json.loads(p))) for p in batch["paths"]]
        return {"unit": np.asarray(batch["unit"]), "rows": np.asarray(rows, dtype=object)}


def ray_unit_rows(job: UnitJob, units: list[list[str]], *, address: str | None = None,
                  workers: int | None = None) -> Iterator[list[dict]]:
    """The CSV rows of each unit, in unit order, computed by a Ray actor pool (see the module docstring)."""
    if not units:
        return
    if job.threads < 1:
        import torch

        job = replace(job, threads=torch.get_num_threads())
    with ray_session(address) as ray:
        size = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // job.threads)
        items = [{"unit": i, "paths": json.dumps(u)} for i, u in enumerate(units)]
        for row in ordered_map(ray, items, _InspectActor, (job,), size, num_cpus=job.threads):
            yield json.loads(row["rows"])


__all__ = ["EXECUTORS", "UnitJob", "check_executor", "ray_unit_rows"]
