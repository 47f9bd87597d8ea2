"""``defectlab data``: describe, split and synthesise datasets."""

from __future__ import annotations

from pathlib import Path

import typer

from defectlab.data.synthetic import DEFECTS, SynthConfig, make_synthetic

app = typer.Typer(help="Know the data: describe a dataset, make split manifests, generate synthetic data.",
                  no_args_is_help=True)


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write the category into."),
    kind: str = typer.Option("texture", help="texture | object"),
    grayscale: bool = typer.Option(False, help="Write grayscale images."),
    size: int = typer.Option(128, help="Image side in pixels."),
    n_train: int = typer.Option(24, help="Good training images."),
    n_test_good: int = typer.Option(8, help="Good test images."),
    n_per_defect: int = typer.Option(6, help="Test images per defect type."),
    defects: str = typer.Option(",".join(DEFECTS), help="Comma-separated defect types."),
    image_format: str = typer.Option("png", help="png | jpg | bmp"),
    seed: int = typer.Option(0),
    category: str = typer.Option(None, help="Category folder name (default from kind)."),
) -> None:
    """Generate a small synthetic MVTec-format dataset (seeded, deterministic)."""
    cfg = SynthConfig(kind=kind, grayscale=grayscale, size=size, n_train=n_train, n_test_good=n_test_good,
                      n_per_defect=n_per_defect, defects=tuple(d.strip() for d in defects.split(",") if d.strip()),
                      image_format=image_format, seed=seed)
    path = make_synthetic(out, cfg, category=category)
    typer.echo(f"wrote {path}")
