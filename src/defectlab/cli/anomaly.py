"""``defectlab anomaly fit | test | predict``: thin; the work is in ``defectlab.anomaly.runner``.

Run folder (``--out RUN``): ``config.yaml`` (resolved), ``detector.json`` + ``model.safetensors`` (the
deployable detector), and after testing ``metrics.json``, ``scores.csv``, ``overlays/*.png``, ``report.md``.
Every file is written atomically; ``fit`` on a folder that already holds a detector with the same
resolved config reuses it (``--force`` refits).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Optional

import typer

from defectlab.config import atomic_write_text, from_dict, load_yaml, to_dict, write_yaml
from defectlab.errors import BadInputError, ConfigError

app = typer.Typer(help="Anomaly detection trained on good images only.", no_args_is_help=True)

CONFIG_FILE = "config.yaml"
DEVICE_HELP = "auto (default: CUDA when present, else MPS, else CPU) | cpu | cuda | cuda:N | mps."
HALF_HELP = "Half-precision inference (bfloat16 on the CPU, float16 on a GPU); scores differ slightly."


def _resolve(base: dict[str, Any], overrides: dict[str, Any], options: dict[str, Any]):
    from defectlab.anomaly.runner import RunConfig

    merged = dict(to_dict(RunConfig()))
    merged.update(base)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    opts = dict(merged.get("options") or {})
    opts.update({k: v for k, v in options.items() if v is not None})
    merged["options"] = opts
    return from_dict(RunConfig, merged, where="anomaly config")


@app.command()
def fit(
    data: Path = typer.Argument(..., help="Dataset folder (MVTec category, or a layout with a train split)."),
    out: Path = typer.Option(..., "--out", help="Run folder to write."),
    model: Optional[str] = typer.Option(
        None, help="Method: patchcore (default), padim, knn, autoencoder, deep_svdd, ocsvm."),
    backbone: Optional[str] = typer.Option(None, help="Backbone (default efficientnet_lite0 for patchcore)."),
    weights: Optional[str] = typer.Option(None, help="imagenet (default, found offline) | none | FILE."),
    image_size: Optional[int] = typer.Option(None, help="Model input size in pixels (default 256; native: the "
                                                        "median training image's longer side)."),
    resize: Optional[str] = typer.Option(None, help="auto (default: native for patchcore, letterbox for the "
                                                    "others) | native | letterbox | squash | crop."),
    standardize: Optional[bool] = typer.Option(None, "--standardize/--no-standardize",
                                               help="Per-image intensity standardisation (default on)."),
    coreset_ratio: Optional[float] = typer.Option(None, help="PatchCore memory-bank fraction (default 0.01)."),
    search: Optional[str] = typer.Option(None, help="PatchCore nearest-neighbour search: auto (default: exact "
                                                    "FAISS from 200k bank rows) | torch | faiss | faiss-ivf | "
                                                    "faiss-hnsw."),
    holdout: Optional[float] = typer.Option(None, help="Fraction of train/good kept for the threshold (0.1)."),
    holdout_group: Optional[str] = typer.Option(
        None, help="Which images show one part (held out whole): auto (default: near-duplicate pixels) | none | "
                   "regex:PATTERN naming the part in the file name (first group)."),
    false_alarm: Optional[float] = typer.Option(
        None, help="Target false-alarm rate on good parts for the deployable threshold (default 0.01)."),
    quantile: Optional[float] = typer.Option(None, help="Old knob: threshold quantile of held-out scores "
                                                        "(same as --false-alarm 1-Q)."),
    batch_size: Optional[int] = typer.Option(None),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with RunConfig keys; flags override it."),
    test: bool = typer.Option(True, "--test/--no-test", help="Evaluate on the test split afterwards."),
    force: bool = typer.Option(False, help="Refit even if RUN holds a detector with this config."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    half: bool = typer.Option(False, "--half", help=HALF_HELP + " Test only: fitting stays float32."),
    executor: str = typer.Option("local", help="local | ray: PatchCore's feature extraction on a Ray actor pool "
                                               "(the same memory bank)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster to join (ray://HOST:10001, HOST:6379 or auto; "
                                                     "default: start a local Ray)."),
    workers: Optional[int] = typer.Option(None, help="Ray actors (default: the cluster's CPUs / threads)."),
) -> None:
    """Fit a detector on the good training images and save it (then test it)."""
    from defectlab.anomaly.detector import META_FILE, Detector
    from defectlab.anomaly.runner import fit_detector, place

    base = load_yaml(config) if config else {}
    cfg = _resolve(base, {"data": str(data), "model": model, "image_size": image_size, "resize": resize,
                          "standardize": standardize, "holdout": holdout, "holdout_group": holdout_group,
                          "false_alarm": false_alarm, "quantile": quantile, "batch_size": batch_size},
                   {"backbone": backbone, "weights": weights, "coreset_ratio": coreset_ratio, "search": search})
    resolved = to_dict(cfg)
    previous = out / CONFIG_FILE
    if not force and (out / META_FILE).is_file() and previous.is_file() and load_yaml(previous) == resolved:
        typer.echo(f"{out}: already fitted with this config; reusing it (--force to refit)")
        det = Detector.load(out)
        place(det, device)
    else:
        det = fit_detector(cfg, device=device, executor=executor, address=address, workers=workers)
        det.save(out)
        write_yaml(out / CONFIG_FILE, resolved)
        t = det.thresholds
        typer.echo(f"fitted {cfg.model} in {det.training['fit_seconds']} s on {det.training['n_fit']} images; "
                   f"deployable threshold {t.image:.4g} ({t.rule}); hold-out: {t.holdout} -> {out}")
    if test:
        from defectlab.data.index import open_dataset

        index = open_dataset(cfg.data)
        if index.select(split="test"):
            _run_test(det, index, out, cfg, half)


@app.command("test")
def test_cmd(
    run: Path = typer.Argument(..., help="Run folder written by 'anomaly fit'."),
    data: Optional[Path] = typer.Argument(None, help="Dataset to test on (default: the one fitted on)."),
    overlays: Optional[int] = typer.Option(None, help="How many heatmap overlays to draw (default 24)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    half: bool = typer.Option(False, "--half", help=HALF_HELP),
) -> None:
    """Evaluate a saved detector on a test split: metrics.json, scores.csv, overlays, report.md."""
    from defectlab.anomaly.detector import Detector
    from defectlab.anomaly.runner import RunConfig, place
    from defectlab.data.index import open_dataset

    det = Detector.load(run)
    place(det, device)
    cfg_path = run / CONFIG_FILE
    cfg = from_dict(RunConfig, load_yaml(cfg_path)) if cfg_path.is_file() else RunConfig()
    if data is not None:
        cfg.data = str(data)
    elif not cfg.data:
        cfg.data = det.training.get("data", "")
    if overlays is not None:
        cfg.overlays = overlays
    _run_test(det, open_dataset(cfg.data), run, cfg, half)


def _run_test(det, index, run: Path, cfg, half: bool = False) -> None:  # noqa: ANN001 (types from lazy imports)
    from defectlab.report.anomaly_run import write_evaluation

    res = write_evaluation(det, index, run, cfg, half=half)
    overall = res.metrics.get("all", {})
    if "image_auroc" in overall:
        msg = f"image AUROC {overall['image_auroc']:.3f}"
        if "pixel_auroc" in overall:
            msg += f", pixel AUROC {overall['pixel_auroc']:.3f}, AUPRO {overall['pixel_aupro']:.3f}"
        typer.echo(f"{msg}; {res.ms_per_image:.0f} ms/image -> {run / 'report.md'}")
    else:
        typer.echo(f"scored {len(res.rows)} images (one class only: no AUROC) -> {run / 'scores.csv'}")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run folder written by 'anomaly fit'."),
    images: list[Path] = typer.Argument(..., help="Image files or folders."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Also write the results to this CSV file."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Score new images with a saved detector: score, verdict (deployable threshold) and regions."""
    from defectlab.anomaly.detector import Detector
    from defectlab.anomaly.runner import place
    from defectlab.data.io import is_image_file

    det = Detector.load(run)
    place(det, device)
    files: list[Path] = []
    for p in images:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if is_image_file(f))
        elif p.exists():
            files.append(p)
        else:
            raise BadInputError(p, "file not found")
    if not files:
        raise ConfigError("no images to predict")
    rows = []
    for pred in det.predict_images(files):
        verdict = "DEFECT" if pred.is_defect else "ok"
        typer.echo(f"{pred.path}\t{pred.score:.4g}\t{verdict}\t{len(pred.boxes)} region(s)")
        rows.append({"path": pred.path, "score": pred.score, "threshold": pred.threshold,
                     "is_defect": int(pred.is_defect), "boxes": " ".join(",".join(map(str, b)) for b in pred.boxes)})
    if csv_out is not None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(csv_out, buf.getvalue())
