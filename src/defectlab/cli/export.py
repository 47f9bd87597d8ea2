"""``defectlab export``: masks -> COCO / YOLO / VOC / SAM, and VOC boxes -> COCO / YOLO.

One subcommand per format (``defectlab export coco DATA OUT``), so a new format is one more command.
DATA is a dataset folder (MVTec or folder layout, with masks) or a split manifest CSV.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from defectlab.config import write_json
from defectlab.export import EXPORTERS, ExportOptions, collect, import_voc
from defectlab.export.items import ExportItem

app = typer.Typer(help="Export masks as COCO / YOLO / VOC / SAM datasets; import VOC boxes.",
                  no_args_is_help=True)

DATA = typer.Argument(..., help="Dataset folder (MVTec or folder layout, with masks) or a manifest CSV.")
OUT = typer.Argument(..., help="Output folder.")
MIN_AREA = typer.Option(1, "--min-area", help="Drop mask components smaller than this many pixels.")
TOLERANCE = typer.Option(0.0, "--tolerance", help="Polygon simplification in pixels (0 = exact outline).")
IMAGES = typer.Option("copy", "--images", help="copy | symlink | none (reference originals; not for YOLO).")
GOOD = typer.Option(True, "--good/--no-good", help="Include good images as entries without instances.")
MANIFEST = typer.Option(None, "--manifest", help="Split manifest CSV (defectlab data split) for the splits.")
MASK_DIR = typer.Option(None, "--mask-dir", help="Folder layout: masks in MASK_DIR/<defect>/<stem>.png.")


def _run(fmt: str, data: Path, out: Path, opts: ExportOptions, *, polygons: bool = True,
         **format_options: Any) -> None:
    items, categories = collect(data, opts, polygons=polygons)
    _write(fmt, items, categories, out, opts.images, {"source": str(data), "options": opts}, **format_options)


def _write(fmt: str, items: list[ExportItem], categories: list[str], out: Path, images: str,
           provenance: dict[str, Any], **format_options: Any) -> None:
    summary = EXPORTERS.get(fmt)(items, categories, out, images=images, **format_options)
    summary.update(provenance, categories=categories, format_options=format_options)
    write_json(Path(out) / "export.json", summary)
    for split, n in summary.get("splits", {}).items():
        typer.echo(f"{split}: {n['images']} images, {n['instances']} instances")
    if "note" in summary:
        typer.echo(f"note: {summary['note']}")
    typer.echo(f"wrote {fmt} export to {out}")


def _opts(min_area: int, tolerance: float, images: str, good: bool, manifest: Path | None,
          mask_dir: Path | None) -> ExportOptions:
    return ExportOptions(min_area=min_area, tolerance=tolerance, images=images, include_good=good,
                         manifest=str(manifest) if manifest else None,
                         mask_dir=str(mask_dir) if mask_dir else None)


@app.command()
def coco(data: Path = DATA, out: Path = OUT,
         segm: str = typer.Option("both", help="both | polygon | rle | none"),
         min_area: int = MIN_AREA, tolerance: float = TOLERANCE, images: str = IMAGES, good: bool = GOOD,
         manifest: Path = MANIFEST, mask_dir: Path = MASK_DIR) -> None:
    """COCO instances JSON per split (polygon file + exact RLE file by default)."""
    _run("coco", data, out, _opts(min_area, tolerance, images, good, manifest, mask_dir),
         polygons=segm in ("both", "polygon"), segm=segm)


@app.command()
def yolo(data: Path = DATA, out: Path = OUT, task: str = typer.Option("detect", help="detect | segment"),
         min_area: int = MIN_AREA, tolerance: float = TOLERANCE, images: str = IMAGES, good: bool = GOOD,
         manifest: Path = MANIFEST, mask_dir: Path = MASK_DIR) -> None:
    """YOLO detection (boxes) or segmentation (polygons) labels, images/ and data.yaml."""
    _run("yolo", data, out, _opts(min_area, tolerance, images, good, manifest, mask_dir),
         polygons=task == "segment", task=task)


@app.command()
def voc(data: Path = DATA, out: Path = OUT, min_area: int = MIN_AREA, images: str = IMAGES, good: bool = GOOD,
        manifest: Path = MANIFEST, mask_dir: Path = MASK_DIR) -> None:
    """Pascal VOC XML boxes (1-based inclusive coordinates)."""
    _run("voc", data, out, _opts(min_area, 0.0, images, good, manifest, mask_dir), polygons=False)


@app.command()
def sam(data: Path = DATA, out: Path = OUT, min_area: int = MIN_AREA, images: str = IMAGES, good: bool = GOOD,
        manifest: Path = MANIFEST, mask_dir: Path = MASK_DIR) -> None:
    """Per-instance mask PNGs with box and point prompts (sam.json)."""
    _run("sam", data, out, _opts(min_area, 0.0, images, good, manifest, mask_dir), polygons=False)


@app.command("import-voc")
def import_voc_cmd(
    annotations: Path = typer.Argument(..., help="Folder of VOC XML files."),
    images_dir: Path = typer.Argument(..., metavar="IMAGES", help="Folder of the images they name."),
    out: Path = OUT,
    to: str = typer.Option("coco", "--to", help="coco | yolo | voc | sam"),
    val_fraction: float = typer.Option(0.0, help="Seeded per-class share of images for a 'val' split."),
    seed: int = typer.Option(0),
    images: str = IMAGES,
) -> None:
    """VOC boxes -> COCO (bbox only) / YOLO detection, so box-only datasets work too."""
    items, categories = import_voc(annotations, images_dir, val_fraction=val_fraction, seed=seed)
    fmt_opts: dict[str, Any] = {"coco": {"segm": "none"}, "yolo": {"task": "detect"}}.get(to, {})
    _write(to, items, categories, out, images, {"source": str(annotations), "images_dir": str(images_dir),
                                                "val_fraction": val_fraction, "seed": seed}, **fmt_opts)




@app.command("onnx")
def onnx_cmd(run: Path = typer.Argument(..., help="A fitted anomaly run folder (defectlab anomaly fit)."),
             out: Path = typer.Option(None, "--out", help="Output folder (default RUN/onnx).")) -> None:
    """Anomaly run -> ONNX: the feature extractor, and the whole scorer where the method allows (PatchCore)."""
    from defectlab.export.onnx import export_onnx

    s = export_onnx(run, out)
    scorer = s["scorer"]
    typer.echo(f"features: max |onnx - torch| {s['features']['max_abs_diff']:.2e}")
    typer.echo(f"scorer: max |onnx - torch| score {scorer['max_abs_diff_scores']:.2e}, map "
               f"{scorer['max_abs_diff_maps']:.2e}" if scorer else f"scorer: not exported ({s['note']})")
    typer.echo(f"wrote ONNX export to {out or Path(run) / 'onnx'}")
