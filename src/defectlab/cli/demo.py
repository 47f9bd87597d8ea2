"""``defectlab demo``: the main job on an embedded default (a synthetic dataset)."""

from __future__ import annotations

from pathlib import Path

import typer

from defectlab.data.synthetic import SynthConfig, make_synthetic


def demo(out: Path = typer.Option(Path("runs/demo"), help="Where to write the dataset and the reports.")) -> None:
    """Generate a synthetic dataset and run the pipeline on it (describe; later: detect, report)."""
    data = make_synthetic(out / "data", SynthConfig(kind="object", seed=0))
    typer.echo(f"synthetic dataset: {data}")
