"""``defectlab inspect``: batch inspection of a folder with a fitted anomaly run."""

from __future__ import annotations

from pathlib import Path

import typer

from defectlab.inspect.batch import inspect_folder


def inspect(
    run: Path = typer.Argument(..., help="A fitted anomaly run folder (defectlab anomaly fit ... --out RUN)."),
    folder: Path = typer.Argument(..., help="Folder of images to inspect (searched recursively)."),
    out: Path = typer.Option(Path("results.csv"), "--out", "-o",
                             help="Results CSV; an existing one is resumed (images already listed are skipped)."),
    heatmaps: Path = typer.Option(None, help="Write a heatmap overlay PNG per image into this folder."),
    batch_size: int = typer.Option(8, help="Images per inference batch."),
    engine: str = typer.Option("torch", help="torch | onnx (onnx needs `defectlab export onnx RUN` first)."),
    retry_errors: bool = typer.Option(False, help="On resume, try the files listed as errors again."),
    records: str = typer.Option(None, help="Record every inspection in this store (a folder or a database URL)."),
    records_images: Path = typer.Option(None, help="Image folder of a database-URL record store."),
    source: str = typer.Option("", help="Line/station tag stored with each record."),
) -> None:
    """Score every image: verdict against the deployable threshold, defect boxes, optional heatmaps."""
    store = None
    if records:
        from defectlab.records import open_store

        store = open_store(records, images=records_images)
    s = inspect_folder(run, folder, out, heatmaps=heatmaps, batch_size=batch_size, engine=engine,
                       retry_errors=retry_errors, records=store, source=source)
    typer.echo(f"{s.total} images: {s.skipped} already in {s.csv}, {s.inspected} inspected "
               f"({s.defects} defect, {s.inspected - s.defects} good), {s.errors} unreadable")
