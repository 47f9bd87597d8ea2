"""``defectlab demo``: the main job on an embedded default (a synthetic dataset).

synthesise a small MVTec-format set -> describe it -> fit PatchCore (ImageNet EfficientNet-Lite0, offline) on
its good images -> test -> heatmaps and report -> a few-shot head from 2 labelled defects per type -> an
inspection bundle -> one verdict per part on the unlabelled test images. A minute or two on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path

import typer

from defectlab.data.synthetic import SynthConfig, make_synthetic


def demo(out: Path = typer.Option(Path("runs/demo"), help="Where to write the dataset and the reports.")) -> None:
    """Generate a synthetic dataset, describe it, fit PatchCore on its good images, test, report, then build
    an inspection bundle from 2 labelled defects per type and give its verdicts."""
    from defectlab.anomaly.runner import RunConfig, fit_detector
    from defectlab.config import to_dict, write_yaml
    from defectlab.data.index import open_dataset
    from defectlab.report.anomaly_run import write_evaluation

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
    _bundle_verdicts(data, run, out)


def _bundle_verdicts(data: Path, run: Path, out: Path) -> None:
    """Few-shot head (2 labelled images per defect type) -> bundle -> verdicts on the other test images."""
    import json

    from defectlab.verdict import Bundle, RefineConfig, build_bundle, refine_run

    refine_run(data, run, out / "fewshot", RefineConfig(shots=2, steps=250))
    bundle = build_bundle(run, out / "bundle", refine=out / "fewshot")
    used = set(json.loads((out / "fewshot" / "shots.json").read_text())["images"])
    tests = [p for p in sorted((data / "test").rglob("*.png"))
             if "mask" not in p.name and str(p) not in used]
    preds = Bundle.load(bundle).predict_images(tests)
    pairs = list(zip(preds, tests, strict=True))
    right = sum((p.extra["verdict"] == "ok") == (q.parent.name == "good") for p, q in pairs)
    typed = [(p.extra, q.parent.name) for p, q in pairs if q.parent.name != "good"]
    named = sum(e["type"] == t for e, t in typed)
    unknown = sum(e["type"] == "unknown" for e, _ in typed)
    typer.echo(f"bundle {bundle}: ok/defect right on {right}/{len(tests)} unlabelled test images; "
               f"defect type named right on {named}/{len(typed)} ({unknown} 'unknown')")
    for p, q in pairs[:: max(1, len(tests) // 6)]:
        e = p.extra
        probs = ", ".join(f"{c} {v:.2f}" for c, v in e["probabilities"].items())
        typer.echo(f"  {q.parent.name}/{q.name}: {e['verdict']}" + (f" {e['type']} ({probs}), "
                   f"{len(e['regions'])} region(s)" if e["verdict"] == "defect" else ""))
    typer.echo(f"inspect a folder with it: defectlab inspect {bundle} FOLDER; "
               f"serve it: defectlab serve {bundle}")
