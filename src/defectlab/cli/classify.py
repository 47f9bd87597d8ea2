"""``defectlab classify``: run an experiment series, predict with a trained attempt, list models."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Supervised defect-type classification as a reproducible experiment series.",
                  no_args_is_help=True)


@app.command()
def run(
    experiment: Path = typer.Argument(..., help="Experiment YAML (base config + named attempts)."),
    out: Path = typer.Option(..., "--out", help="Run folder; re-running the same command resumes it."),
    attempt: list[str] = typer.Option(None, "--attempt", help="Run only these attempts (repeatable)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    device: Optional[str] = typer.Option(None, "--device", help="Override every attempt's train.device: "
                                         "auto (CUDA when present, else MPS, else CPU) | cpu | cuda[:N] | mps."),
) -> None:
    """Train every attempt and write per-attempt results, comparison.{md,csv,json} and curves.png.

    Data-parallel on N processes (gloo on the CPU, NCCL on GPUs):
    torchrun --standalone --nproc-per-node N -m defectlab classify run EXPERIMENT.yaml --out RUN"""
    from defectlab import distributed
    from defectlab.classify.experiment import load_experiment, run_experiment

    cfg = load_experiment(experiment)
    run_experiment(cfg, out, only=attempt or None, progress=progress, device=device)
    if distributed.is_rank0():  # process 0 alone reports
        typer.echo((out / "comparison.md").read_text())
        typer.echo(f"wrote {out}/comparison.md, comparison.csv, comparison.json, curves.png")


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A finished `classify run` folder (or a best.pt checkpoint)."),
    images: list[Path] = typer.Argument(..., help="Image files or folders."),
    attempt: str = typer.Option(None, help="Attempt to use (default: highest test balanced accuracy)."),
    device: str = typer.Option("auto", help="auto (CUDA when present, else MPS, else CPU) | cpu | cuda[:N] | mps."),
    masks: Path = typer.Option(None, help="Masks folder: each image's DIR/<its folder>/<stem>_mask.png (MVTec "
                               "ground_truth layout) or DIR/<stem>_mask.png; a region-guided attempt (input "
                               "region | pooled) classifies that region."),
    regions_from: Path = typer.Option(None, "--regions-from", help="An anomaly run: a region-guided attempt "
                                      "classifies the region its detector finds in each image (as a bundle "
                                      "does; none found: the whole image / the centre)."),
) -> None:
    """Print the predicted class and its probability for each image."""
    from defectlab.classify.predict import Predictor, pick_checkpoint
    from defectlab.classify.regions import mask_region
    from defectlab.data.io import is_image_file, load_mask, read_info
    from defectlab.errors import BadInputError, ConfigError

    ckpt = run_dir if run_dir.is_file() else pick_checkpoint(run_dir, attempt)
    paths: list[Path] = []
    for p in images:
        if p.is_dir():
            paths += sorted(f for f in p.rglob("*") if is_image_file(f))
        elif p.exists():
            paths.append(p)
        else:
            raise BadInputError(p, "file not found")
    if not paths:
        raise BadInputError(images[0], "no images found")
    typer.echo(f"# {ckpt}")
    if masks is not None and regions_from is not None:
        raise ConfigError("give --masks or --regions-from, not both")
    predictor = Predictor(ckpt, device=device).load()
    if masks is None and regions_from is None:
        if predictor.region_guided:
            typer.echo("# a region-guided attempt without --masks or --regions-from: each image is classified "
                       "around its centre (pooled: over the whole image)", err=True)
        results = predictor.predict(paths)
    else:
        if regions_from is not None:
            from defectlab.classify.pooled import detector_regions

            found = detector_regions(regions_from, paths)
        elif not masks.is_dir():
            raise BadInputError(masks, "not a folder")
        else:
            found = []
            for p in paths:
                name = f"{p.stem}_mask.png"
                f = next((c for c in (masks / p.parent.name / name, masks / name) if c.is_file()), None)
                info = read_info(p)
                found.append(load_mask(f, (info.width, info.height)) if f is not None else None)
        results = []
        for p, m in zip(paths, found, strict=True):
            box = mask_region(m) if m is not None else None
            results.append(predictor.predict_regions(p, [box], [m if box is not None else None])[0])
    for r in results:
        typer.echo(f"{r.path}\t{r.label}\t{r.probability:.3f}")


@app.command("models")
def list_models() -> None:
    """List the registered classifier models."""
    from defectlab.classify import CLASSIFIERS

    for name in CLASSIFIERS.names():
        typer.echo(name)
