"""``defectlab refine`` (the few-shot head) and ``defectlab bundle build`` (the inspection bundle)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    help="Inspection bundles: one verdict per part (ok | defect, type, regions).", no_args_is_help=True
)


def refine(
    data: Path = typer.Argument(..., help="Dataset with labelled defects (defect images with masks)."),
    anomaly_run: Path = typer.Option(..., "--anomaly-run", help="The good-only detector run to build on."),
    out: Path = typer.Option(..., "--out", help="Folder to write the few-shot head to."),
    shots: str = typer.Option("5", "--shots", help="Labelled parts per defect type: a number, or 'half'."),
    group_rule: str = typer.Option(
        "", help="What a part is: '' (each image), 'regex:PATTERN' on the file name."
    ),
    groups: Optional[Path] = typer.Option(
        None, help="CSV with path (relative to DATA) and tile/group columns."
    ),
    steps: int = typer.Option(400, help="Training steps of the head."),
    seed: int = typer.Option(0, help="Which parts are drawn."),
) -> None:
    """Train the few-shot head on k labelled parts per defect type (k = 0: the detector alone)."""
    from defectlab.errors import ConfigError
    from defectlab.verdict.fewshot import RefineConfig
    from defectlab.verdict.refine_run import refine_run

    half = shots == "half"
    if not half and not shots.isdigit():
        raise ConfigError(f"--shots must be a number or 'half', got '{shots}'")
    cfg = RefineConfig(shots=0 if half else int(shots), steps=steps, seed=seed)
    head = refine_run(data, anomaly_run, out, cfg, group_rule=group_rule, groups=groups, half=half)
    typer.echo(
        f"few-shot head ({', '.join(head.classes)}; {shots} labelled parts per type; refined threshold "
        f"{float(head.threshold_):.3g}) -> {out}"
    )


@app.command("build")
def build(
    anomaly_run: Path = typer.Option(
        ..., "--anomaly-run", help="A fitted anomaly run (defectlab anomaly fit)."
    ),
    out: Path = typer.Option(..., "--out", help="Bundle folder to write."),
    refine_dir: Optional[Path] = typer.Option(None, "--refine", help="A few-shot head (defectlab refine)."),
    classify_run: Optional[Path] = typer.Option(
        None, "--classify-run", help="A classify run (its best attempt)."
    ),
    attempt: Optional[str] = typer.Option(None, help="The classify run's attempt to take."),
    min_type_probability: float = typer.Option(0.5, help="Below this the defect type is 'unknown'."),
) -> None:
    """Join an anomaly run, a few-shot head and/or a classifier into one inspection bundle."""
    from defectlab.verdict.bundle import Bundle, build_bundle
    from defectlab.verdict.rule import VerdictRule

    path = build_bundle(
        anomaly_run,
        out,
        refine=refine_dir,
        classify_run=classify_run,
        attempt=attempt,
        rule=VerdictRule(min_type_probability=min_type_probability),
    )
    b = Bundle.load(path)
    typer.echo(
        f"bundle -> {path} (types: {', '.join(b.classes) or 'none'}; parts: {len(b.parts)} files, hashed); "
        f"use it as RUN in 'defectlab inspect' and 'defectlab serve'"
    )
