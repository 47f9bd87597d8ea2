"""``defectlab segment``: fit a U-Net on images + masks, test it (IoU/Dice per defect type, pixel AUROC,
AUPRO, overlays), predict masks for new images."""

from __future__ import annotations

from pathlib import Path

import typer

from defectlab.config import from_dict, load_yaml
from defectlab.segment.model import SegConfig

DEVICE_HELP = "auto (CUDA when present, else CPU) | cpu | cuda[:N] | mps"
app = typer.Typer(help="Supervised defect segmentation (U-Net): fit, test, predict.", no_args_is_help=True)


@app.command()
def fit(
    data: Path = typer.Argument(..., help="Dataset folder with masks, or a split manifest CSV."),
    out: Path = typer.Option(..., "--out", help="Run folder to write."),
    config: Path = typer.Option(None, "--config", help="YAML of SegConfig keys (flags override it)."),
    manifest: Path = typer.Option(None, "--manifest", help="Split manifest CSV (train trains, test tests)."),
    encoder: str = typer.Option(None, help="small | mobilenet_v2"),
    weights: str = typer.Option(None, help="Encoder weights: none | imagenet | FILE (mobilenet_v2)."),
    mode: str = typer.Option(None, help="binary | multi (one channel per defect type)"),
    size: int = typer.Option(None, help="Input side in pixels."),
    epochs: int = typer.Option(None),
    batch_size: int = typer.Option(None),
    lr: float = typer.Option(None),
    test_fraction: float = typer.Option(None, help="Share of each defect type held out (no manifest)."),
    max_good_train: int = typer.Option(None, help="Good images (empty masks) used for training at most."),
    seed: int = typer.Option(None),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Train a U-Net; writes RUN/config.yaml, split.json, model.pt, history.json.

    Data-parallel on N GPUs or CPU processes:
    torchrun --standalone --nproc-per-node N -m defectlab segment fit ..."""
    from defectlab.distributed import is_rank0
    from defectlab.segment.run import fit_run

    values = load_yaml(config) if config else {}
    cli = dict(encoder=encoder, weights=weights, mode=mode, size=size, epochs=epochs, batch_size=batch_size,
               lr=lr, test_fraction=test_fraction, max_good_train=max_good_train, seed=seed)
    values.update({k: v for k, v in cli.items() if v is not None})
    if values.get("encoder") == "mobilenet_v2" and "weights" not in values:
        values["weights"] = "imagenet"
    cfg = from_dict(SegConfig, values, where=str(config) if config else "segment options")
    seg = fit_run(data, out, cfg, manifest=manifest, device=device)
    if not is_rank0():
        return
    last = seg.history_[-1]["loss"] if seg.history_ else float("nan")
    typer.echo(f"trained {cfg.encoder} U-Net ({cfg.mode}, classes {seg.classes_}) for {cfg.epochs} epochs, "
               f"final loss {last:.4f}; run in {out}")


@app.command()
def test(
    run: Path = typer.Argument(..., help="Run folder from 'segment fit'."),
    data: Path = typer.Argument(None, help="Dataset to test on (default: the run's held-out images)."),
    overlays: int = typer.Option(4, help="Overlay PNGs per defect type."),
    split_from: Path = typer.Option(None, "--split-from", help="Test on this U-Net run's held-out images."),
    threshold: float = typer.Option(None, help="Anomaly runs: map threshold (default: its pixel one)."),
    device: str = typer.Option("auto", help=DEVICE_HELP + " (U-Net runs)"),
) -> None:
    """IoU / Dice per defect type, pixel AUROC, AUPRO; writes RUN/metrics.json and RUN/overlays/.

    RUN may also be an anomaly run (defectlab anomaly fit): its maps, thresholded, are scored the same
    way (RUN/localisation.json), e.g. on a U-Net run's held-out images with --split-from."""
    from defectlab.segment.run import evaluate_run

    m = evaluate_run(run, data, n_overlays=overlays, split_from=split_from, threshold=threshold,
                     device=device)
    for dt, v in m["per_type"].items():
        typer.echo(f"{dt:>14}: IoU {v['iou']:.3f}  Dice {v['dice']:.3f}  (n={v['n']})")
    if "good" in m:
        typer.echo(f"{'good':>14}: false alarms on {m['good']['images_with_false_alarm']:.1%} of images")
    if m.get("pixel_auroc") is not None:
        typer.echo(f"pixel AUROC {m['pixel_auroc']:.4f}  AUPRO {m['aupro']:.4f}")
    typer.echo(f"threshold {m['threshold']:.4g}; wrote {m.get('written', run)}")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run folder from 'segment fit'."),
    images: list[Path] = typer.Argument(..., help="Image files or folders."),
    out: Path = typer.Option(None, "--out", help="Output folder (default RUN/predictions)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Masks (<stem>_mask.png), overlays and predictions.json with regions for each image."""
    from defectlab.segment.run import predict_run

    dest = out or run / "predictions"
    res = predict_run(run, images, dest, device=device)
    typer.echo(f"{sum(r['is_defect'] for r in res)}/{len(res)} images with defect pixels; wrote {dest}")


__all__ = ["app"]
