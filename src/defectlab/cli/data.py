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


@app.command()
def describe(
    path: Path = typer.Argument(..., help="An MVTec category, a folder-layout dataset, a root of MVTec "
                                "categories, or a split manifest CSV."),
    out: Path = typer.Option(None, help="Folder for report.json, report.md, class_distribution.png and "
                             "samples.png."),
    lenient: bool = typer.Option(False, help="Warn about and skip unusable files instead of stopping."),
    verify: bool = typer.Option(False, help="Decode every image fully (finds truncated files; slower)."),
    mask_dir: Path = typer.Option(None, help="Folder layout: parallel folder of masks <mask_dir>/<defect>/."),
) -> None:
    """The dataset report: classes, images per split and class, sizes, modes, mask coverage, imbalance."""
    from rich.console import Console

    from defectlab.data.describe import describe_path, rich_tables, write_report

    report, indexes = describe_path(path, lenient=lenient, verify=verify, mask_dir=mask_dir)
    console = Console()
    for table in rich_tables(report):
        console.print(table)
    if out is not None:
        files = write_report(report, out, indexes)
        console.print(f"wrote {len(files)} files to {out}")


@app.command()
def split(
    path: Path = typer.Argument(..., help="A dataset (MVTec category or folder layout) or a manifest CSV."),
    out: Path = typer.Option(..., "--out", help="Manifest CSV to write (<out>.json goes beside it)."),
    val: float = typer.Option(0.15, help="Fraction of each class for validation (ignored with --folds)."),
    test: float = typer.Option(0.15, help="Fraction of each class held out for testing (0: none)."),
    folds: int = typer.Option(0, help="K-fold: every non-test image gets a fold 0..K-1."),
    use_train_good: bool = typer.Option(True, help="MVTec: add train/good to the labelled pool."),
    ratio: str = typer.Option(None, help='Per-class ratio subsampling, e.g. "good:2,defect:1" '
                              "(defect = each defect class not named)."),
    classes: str = typer.Option(None, help="Comma-separated classes to keep (default: all)."),
    long_tail: float = typer.Option(None, help="Imbalance factor of an exponential long-tail train profile."),
    seed: int = typer.Option(0, help="Seed of the shuffles (same seed, same manifest)."),
    lenient: bool = typer.Option(False, help="Skip defect images without masks instead of stopping."),
) -> None:
    """Supervised train/val/test (or k-fold) splits for defect-type classification, as a CSV manifest."""
    from rich.console import Console
    from rich.table import Table

    from defectlab.data.index import open_dataset
    from defectlab.data.split import (
        SplitConfig,
        make_split,
        parse_ratio,
        read_manifest,
        split_counts,
        write_manifest,
    )

    cfg = SplitConfig(val=val, test=test, folds=folds, use_train_good=use_train_good,
                      ratio=parse_ratio(ratio),
                      classes=tuple(c.strip() for c in (classes or "").split(",") if c.strip()),
                      long_tail=long_tail, seed=seed)
    index = read_manifest(path) if path.suffix.lower() == ".csv" else open_dataset(path, lenient=lenient)
    rows = make_split(index, cfg)
    write_manifest(rows, out, cfg, root=index.root)
    counts = split_counts(rows)
    names = sorted({c for v in counts.values() for c in v}, key=lambda c: (c != "good", c))
    table = Table(title=f"{out}: images per split and class (seed {seed})")
    table.add_column("split")
    for c in names:
        table.add_column(c, justify="right")
    table.add_column("total", justify="right")
    for s, per in counts.items():
        table.add_row(s, *(str(per.get(c, 0)) for c in names), str(sum(per.values())))
    Console().print(table)
