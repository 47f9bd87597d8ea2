"""``defectlab demo``: the main job on an embedded default (a synthetic dataset).

synthesise a small MVTec-format set -> describe it -> fit PatchCore (ImageNet EfficientNet-Lite0, offline) on
its good images -> test -> heatmaps and report. About a minute on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path

import typer

from defectlab.data.synthetic import SynthConfig, make_synthetic


def demo(out: Path = typer.Option(Path("runs/demo"), help="Where to write the dataset and the reports.")) -> None:
    """Generate a synthetic dataset, describe it, fit PatchCore on its good images, test, report."""
    from defectlab.anomaly.runner import RunConfig, fit_detector, write_evaluation
    from defectlab.config import to_dict, write_yaml
    from defectlab.data.index import open_dataset

    data = make_synthetic(out / "data", SynthConfig(kind="object", seed=0))
    typer.echo(f"synthetic dataset: {data}")
    try:
        from defectlab.data.describe import describe_path, write_report
    except ImportError:  # the describe step is optional
        describe_path = None
    if describe_path is not None:
        report, indexes = describe_path(data)
        write_report(report, out / "describe", indexes)
        typer.echo(f"dataset report: {out / 'describe' / 'report.md'}")
    run = out / "patchcore"
    cfg = RunConfig(data=str(data), model="patchcore", image_size=128, resize="squash", batch_size=8, overlays=8,
                    holdout=0.25, options={"coreset_ratio": 0.1})  # 6 of the 24 good images set the threshold
    index = open_dataset(data)
    det = fit_detector(cfg, index)
    det.save(run)
    write_yaml(run / "config.yaml", to_dict(cfg))
    res = write_evaluation(det, index, run, cfg)
    m = res.metrics.get("all", {})
    typer.echo(f"PatchCore: image AUROC {m.get('image_auroc', float('nan')):.3f}, pixel AUROC "
               f"{m.get('pixel_auroc', float('nan')):.3f}, AUPRO {m.get('pixel_aupro', float('nan')):.3f} "
               f"-> {run / 'report.md'}")
