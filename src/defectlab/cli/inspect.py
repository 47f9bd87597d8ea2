"""``defectlab inspect``: batch inspection of a folder with a fitted anomaly run."""

from __future__ import annotations

from pathlib import Path

import typer

from defectlab.data.io import DEFAULT_MAX_PIXELS
from defectlab.inspect.batch import inspect_folder
from defectlab.inspect.engine import load_engine


def inspect(
    run: Path = typer.Argument(..., help="A fitted anomaly run folder (defectlab anomaly fit ... --out RUN)."),
    folder: Path = typer.Argument(..., help="Folder of images to inspect (searched recursively)."),
    out: Path = typer.Option(Path("results.csv"), "--out", "-o",
                             help="Results CSV; an existing one is resumed (images already listed are skipped)."),
    heatmaps: Path = typer.Option(None, help="Write a heatmap overlay PNG per image into this folder."),
    batch_size: int = typer.Option(8, help="Images per inference batch."),
    engine: str = typer.Option("torch", help="torch | onnx (onnx needs `defectlab export onnx RUN` first)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N] | mps: where the model runs (the ONNX "
                               "engine: cpu, or cuda with onnxruntime-gpu)."),
    retry_errors: bool = typer.Option(False, help="On resume, try the files listed as errors again."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Largest image file (width x height) decoded; "
                                   "the model's own pixel budget applies too (docs/serving.md)."),
    max_model_pixels: int = typer.Option(None, help="Largest input the model sees (w x h after its resize); "
                                         "default 4x the fitted input area."),
    records: str = typer.Option(None, help="Record every inspection in this store (a folder or a database URL)."),
    records_images: Path = typer.Option(None, help="Image folder of a database-URL record store."),
    source: str = typer.Option("", help="Line/station tag stored with each record."),
    executor: str = typer.Option("local", help="local | ray (an actor pool on Ray; docs/scaling.md)."),
    address: str = typer.Option(None, help="--executor ray: the Ray cluster to join (default: start a local "
                                "Ray on this machine's cores)."),
    workers: int = typer.Option(None, help="--executor ray: actors (default one per CPU of the cluster)."),
) -> None:
    """Score every image: verdict against the deployable threshold, defect boxes, optional heatmaps.
    Exits 1 when every image failed or the inference engine failed (rows are still written)."""
    store = None
    if records:
        from defectlab.records import open_store

        store = open_store(records, images=records_images)
    if executor == "local":
        model = load_engine(run, engine, device)
        if max_model_pixels is not None:
            model.max_model_pixels = max_model_pixels
        s = inspect_folder(model, folder, out, heatmaps=heatmaps, batch_size=batch_size,
                           retry_errors=retry_errors, max_pixels=max_pixels, records=store, source=source)
    else:  # every worker loads the run itself
        s = inspect_folder(run, folder, out, heatmaps=heatmaps, batch_size=batch_size, engine=engine,
                           retry_errors=retry_errors, max_pixels=max_pixels,
                           max_model_pixels=max_model_pixels, executor=executor, address=address,
                           workers=workers, records=store, source=source)
    typer.echo(f"{s.total} images: {s.skipped} already in {s.csv}, {s.inspected} inspected "
               f"({s.defects} defect, {s.inspected - s.defects} good), {s.errors} errors")
    if s.failed:
        typer.echo(f"error: {s.failed}", err=True)
        raise typer.Exit(1)
