"""Write docs/benchmarks.md, the one results page, from the JSON under bench/results/.

    python bench/results_page.py            # rewrite docs/benchmarks.md
    python bench/results_page.py --check    # exit 1 if docs/benchmarks.md is not what the JSON gives (CI)

Each section names the command that wrote its JSON, shows one table read from that JSON, and says in a few
lines what the table means. A section whose JSON is missing is left out. Add a section by writing one
function that returns ``Section | None`` and listing it in ``SECTIONS``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"


@dataclass
class Section:
    title: str
    command: str
    source: str  # JSON file(s), relative to the repository root
    machine: str
    table: str
    reading: str


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def f3(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def pm(d: dict[str, float], scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * d['mean']:.{digits}f} ± {scale * d['std']:.{digits}f}"


def load_text(d: dict[str, Any]) -> str:
    start = d.get("loadavg_start") or d.get("load_avg_start") or (d.get("loadavg") or {}).get("start") \
        or d.get("load")
    if not start:
        return "2-core CPU (x86_64)"
    return f"2-core CPU (x86_64), load average {start[0]:.1f} at the start"


# -- sections -------------------------------------------------------------------------------------------


def anomaly_tile_split() -> Section | None:
    d = load("patchcore_magnetic_tile_256_native_tiles.json")
    if d is None:
        return None
    rows = [["PatchCore default (EfficientNet-Lite0, native 256, 1% coreset)", f3(d["image_auroc"]),
             f3(d["pixel_auroc"]), f3(d["pixel_aupro"]), f3(d["background_auroc"]), f"{d['fit_s']:.0f}",
             f"{d['ms_per_img']:.0f}"]]
    return Section(
        "Anomaly detection from good images: magnetic_tile, split by tile",
        "python bench/patchcore_magnetic_tile.py 256 native '{}'   # SPLIT=tiles",
        "bench/results/patchcore_magnetic_tile_256_native_tiles.json", load_text(d),
        table(["detector", "image AUROC", "pixel AUROC", "AUPRO (FPR ≤ 0.3)", "background AUROC", "fit s",
               "ms / image"], rows),
        f"Fitted on good training tiles only and tested on {d['n']} images of tiles it never saw. "
        "`uneven` bands are most of the defect pixels and their interior looks like good surface, which "
        "caps pixel AUROC for any good-only detector; the few-shot refinement (see the verdict guide) "
        "learns them from a handful of labelled tiles. Background AUROC (defect-free area of defective "
        "images vs good images) shows how much the score of a whole new tile drifts.")


def threshold_holdout() -> Section | None:
    d = load("threshold_holdout.json")
    if d is None:
        return None
    rows = [[name, len([r for r in d["runs"] if r["holdout"] == name]), pct(m["false_alarms_new_tiles"]),
             pct(m["defects_flagged"])] for name, m in d["mean"].items()]
    return Section(
        "Deployable threshold: hold out whole parts, not shots",
        d["command"], "bench/results/threshold_holdout.json", "2-core CPU (x86_64)",
        table(["hold-out for the threshold", "seeds", "false alarms on new good tiles", "defects flagged"], rows),
        f"Quantile {d['quantile']} of the held-out good scores. Shots of one tile look alike, so a random "
        "hold-out of shots scores like the training data and sets the threshold too low: new tiles then "
        "raise false alarms. Holding out whole tiles (`--holdout-group`) gives a threshold that holds on "
        "new parts, at the cost of recall.")


def anomalib_side_by_side() -> Section | None:
    d = load("anomaly_magnetic_tile.json")
    if d is None:
        return None
    ours, theirs = d["sides"]["defectlab"], d["sides"]["anomalib"]
    rows = []
    for label, key in [("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"), ("AUPRO", "pixel_aupro")]:
        rows.append([label, f3(ours["metrics"][key]), f3(theirs["metrics"][key])])
    for label, key in [("fit s", "fit_s"), ("ms / image, batch 1", "infer_ms_per_image_batch1"),
                       ("ms / image, batched", "infer_ms_per_image_batched"), ("peak RSS MB", "peak_rss_mb")]:
        rows.append([label, f"{ours[key]:.1f}", f"{theirs[key]:.1f}"])
    data = d["data"]
    return Section(
        "PatchCore side by side with anomalib",
        d["command"], "bench/results/anomaly_magnetic_tile.json",
        f"2-core CPU, {d['settings']['threads']} threads, load average {d['machine']['loadavg_start'][0]:.1f}",
        table(["", "defectlab", f"anomalib {theirs.get('anomalib', '')}".strip()], rows),
        f"Same preprocessed tensors ({data['n_train']} training and {data['n_test']} test images of "
        f"magnetic_tile, {data['resize']} {data['image_size'][0]} px), the same MobileNetV2 weights and layers, "
        "1% coreset, metrics computed by the same code for both. Both sides run in their own process; "
        "bench/README.md says how the two are kept equal.")


def classify_neu() -> Section | None:
    d = load("classify_neu.json")
    if d is None:
        return None
    tr = d["train"]
    rows = [[f"{d['model']} ({d['weights']}, {d['freeze']} stages frozen), {tr['image_size']} px, {tr['epochs']} epochs",
             f"{100 * d['test_acc_mean']:.2f} ± {100 * d['test_acc_std']:.2f}", pct(d["balanced_acc_mean"], 2),
             pct(d["macro_f1_mean"], 2), f"{d['infer_ms_per_image']:.0f}"]]
    return Section(
        "Defect-type classification: NEU-DET, 5-fold",
        "python " + d["command"], "bench/results/classify_neu.json", load_text(d),
        table(["model", "test accuracy %", "balanced accuracy", "macro-F1", "ms / image"], rows),
        f"{d['dataset']['images']} images, {len(d['dataset']['classes'])} classes of 300. Each fold is tested "
        "once; the next fold picks the checkpoint, the other three train. A pretrained backbone with its early "
        "stages frozen separates these steel-surface classes almost perfectly at 64 px.")


def _longtail(name: str) -> Section | None:
    d = load(f"longtail_{name}.json")
    if d is None:
        return None
    summary = d["summary"]
    order = sorted(summary, key=lambda m: -summary[m]["balanced_accuracy"]["mean"])
    classes = list(d["train_counts"])
    ce = summary["ce"]["balanced_accuracy"]["mean"]
    rows = []
    for m in order:
        s = summary[m]
        gain = "" if m == "ce" else f" ({100 * (s['balanced_accuracy']['mean'] - ce):+.1f})"
        rows.append([m, pm(s["balanced_accuracy"]) + gain, pm(s["macro_f1"])]
                    + [f"{100 * s['per_class_recall'][c]['mean']:.0f}" for c in classes])
    head = ["method", "balanced accuracy", "macro-F1"] + [f"{c} ({d['train_counts'][c]})" for c in classes]
    what = ("NEU-DET cut to imbalance factor 100 on the training split (balanced test set)" if name == "neu"
            else "magnetic_tile defect types plus good images at their natural imbalance")
    return Section(
        f"Long-tail methods: {name}",
        d["command"], f"bench/results/longtail_{name}.json", "2-core CPU (x86_64)",
        table(head, rows),
        f"{what}; {d['backbone']}; head {d['head']}; {d['epochs']} epochs; seeds {d['seeds']}; mean ± std in %, "
        f"(+x) = points over plain cross-entropy, per-class recall in % with the training count. Best: "
        f"**{d['best_method']}**, {d['best_gain_over_ce_points']:+.1f} points over cross-entropy.")


def segmentation() -> Section | None:
    d = load("segment_magnetic_tile_mnv2.json")
    if d is None:
        return None
    u, a = d["unet"], d["anomaly"]
    rows = []
    for t, m in u["per_type"].items():
        pa = a.get("per_type", {}).get(t, {})
        rows.append([f"{t} ({m['n']})", f3(m["iou"]), f3(m["dice"]), f3(pa.get("iou")), f3(pa.get("dice"))])
    rows.append(["pixel AUROC", f3(u["pixel_auroc"]), "", f3(a.get("pixel_auroc")), ""])
    rows.append(["AUPRO", f3(u["aupro"]), "", f3(a.get("aupro")), ""])
    return Section(
        "Localisation: U-Net from masks vs the good-only detector",
        d["command"], "bench/results/segment_magnetic_tile_mnv2.json", load_text(d),
        table(["defect type (test images)", "U-Net IoU", "U-Net Dice", "PatchCore IoU", "PatchCore Dice"], rows),
        "Half of each defect type's images train the U-Net (MobileNetV2 ImageNet encoder); the other half and "
        "the good test images test both. The supervised U-Net wins where masks exist (it learns `uneven`); "
        "the good-only detector needs no labels and finds more of the small defects. This run used the "
        "earlier split of the good images by file name.")


def serving() -> Section | None:
    rows, sources, machine = [], [], ""
    for name in ("magnetic_tile", "synthetic"):
        d = load(f"serve_{name}.json")
        if d is None:
            continue
        sources.append(f"bench/results/serve_{name}.json")
        machine = machine or load_text(d)
        for engine in ("torch", "onnx"):
            ins, seq, conc = d["inspect"][engine], d["serve"][engine]["sequential"], d["serve"][engine]["concurrent_8"]
            rows.append([name, "onnxruntime" if engine == "onnx" else "torch", f"{ins['images_per_s']:.1f}",
                         f"{seq['p50_ms']:.0f}", f"{seq['p95_ms']:.0f}", f"{conc['requests_per_s']:.1f}"])
    if not rows:
        return None
    return Section(
        "Inspection in production: batch and HTTP",
        "python bench/serve_bench.py --dataset magnetic_tile --max-test 120 --requests 100",
        ", ".join(sources), machine,
        table(["dataset", "engine", "`inspect` images/s", "/inspect p50 ms", "p95 ms", "8 clients: requests/s"], rows),
        "The default detector behind `defectlab inspect` and `defectlab serve`, heatmaps off for `inspect`, "
        "the heatmap PNG in every HTTP answer. Both engines give the same verdicts; the ONNX Runtime engine "
        "is about twice as fast on this CPU.")


def nn_search() -> Section | None:
    d = load("nn_search.json")
    if d is None:
        return None
    names = ["faiss-flat", "faiss-ivf nprobe=8", "faiss-ivf nprobe=32", "faiss-hnsw ef=64", "faiss-hnsw ef=128"]
    rows = []
    for r in d["results"]:
        b = r["backends"]
        cells = [f"{b[n]['speedup_vs_torch']:.2f}x, {b[n]['recall_at_1']:.4f}" if n in b else "-" for n in names]
        rows.append([f"{r['bank_rows']:,}", f"{b['torch']['ms_per_image']:,.0f}", *cells])
    return Section(
        "Nearest-neighbour search for large PatchCore banks: torch vs FAISS",
        "python bench/nn_search.py --images 3", "bench/results/nn_search.json", load_text(d),
        table(["bank rows (x 152)", "torch ms/image", *[f"{n}: speed-up, recall@1" for n in names]], rows),
        "1024 query patches per image against banks of feature-like synthetic rows, each backend timed side by "
        "side per image. Exact FAISS gives today's distances (to 1e-5) and pays only from about a million "
        "rows; IVF with 32 probes keeps recall@1 at 1.0 while 27x faster at 1M rows. At the default bank "
        "(about 10k rows) today's search stays the fastest.")


def ray_inspect() -> Section | None:
    d = load("ray_inspect.json")
    if d is None:
        return None
    rows = [[r["round"] + 1, r["executor"], f"{r['wall_s']:.1f}", f"{r['images_per_s_wall']:.2f}"]
            for r in d["rounds"]]
    return Section(
        "Batch inspection on Ray vs the local executor",
        f"python bench/ray_inspect.py --rounds {d['settings'].get('rounds', 2)}", "bench/results/ray_inspect.json",
        load_text(d),
        table(["round", "executor", "wall s (incl. starting Ray)", "images/s"], rows),
        f"The default detector on {d['settings'].get('images')} magnetic_tile test images, batch "
        f"{d['settings'].get('batch')}, one local Ray actor per 2 cores (the driver's thread count). Throughput "
        f"ray/local {f3(d.get('ratio_ray_over_local_wall'))} including Ray's start-up; identical CSV: "
        f"{d['identical_csv']}. Taken at a load average far above the core count: the ratio says Ray costs "
        "no throughput here, the absolute rates are not this machine's; docs/scaling.md sizes a cluster from "
        "the idle serving benchmark.")


def soak() -> Section | None:
    d = load("soak_magnetic_tile.json")
    if d is None:
        return None
    rows = []
    for engine in ("torch", "onnx"):
        s, m = d.get(f"soak_{engine}"), d.get(f"memory_{engine}")
        if s is None:
            continue
        lat = s["latency_200_ms"] or {}
        big = (m or {}).get("largest_accepted", {})
        rows.append([engine, s["requests"], s["n_5xx"], f"{lat.get('p50', 0):.0f}", f"{lat.get('p95', 0):.0f}",
                     f"{s['rss_mb']['mid']:.0f} -> {s['rss_mb']['end']:.0f} ({s['rss_mb']['growth_last_half_pct']:+.1f}%)",
                     f"{(m or {}).get('typical', {}).get('peak_mb', 0):.0f} / {big.get('peak_mb', 0):.0f} MB "
                     f"({big.get('peak_vs_typical', 0):.2f}x)"])
    fixed = d.get("memory_torch_letterbox", {})
    poison = d.get("inspect_poison")
    reading = (f"{d['mix']} requests (real magnetic_tile test images, every malformed kind, the largest accepted "
               f"images) from 8 clients for {d['minutes_per_engine']:g} minutes per engine against a `defectlab "
               "serve` subprocess: what fitted in that time on the shared machine, not the 20,000 the target "
               "names. No 5xx; RSS flat over the second half. Peak RSS of one request: a typical image vs the "
               f"largest accepted ({d['largest_accepted'][0]} px square at this run's scale), each in a fresh "
               "server.")
    if fixed:
        reading += (f" Same model with a fixed-size input: a 6300x6300 PNG (the file limit decides) peaks at "
                    f"{fixed['6300x6300.png']['peak_mb']:.0f} MB vs {fixed['typical']['peak_mb']:.0f} MB typical "
                    f"in {fixed['6300x6300.png']['latency_ms'] / 1000:.1f} s; a 6300x6300 JPEG (draft mode) "
                    f"{fixed['6300x6300.jpg']['peak_mb']:.0f} MB.")
    if poison:
        reading += (f" `inspect` over {poison['images']} images with 5 poison ones: {poison['rows']} rows, "
                    f"{poison['errors']} errors, exit code {poison['exit_code']}, one run.")
    return Section(
        "Serving soak: bounded memory, no 5xx",
        "nice python bench/soak.py --run RUN --minutes 4 --memory --poison",
        "bench/results/soak_magnetic_tile.json", d["machine"],
        table(["engine", "requests", "5xx", "p50 ms", "p95 ms", "RSS MB mid -> end", "peak RSS typical / largest"],
              rows), reading)


SECTIONS: list[Callable[[], Section | None]] = [
    anomaly_tile_split, threshold_holdout, anomalib_side_by_side, classify_neu,
    lambda: _longtail("neu"), lambda: _longtail("magnetic_tile"), segmentation, serving, soak, nn_search,
    ray_inspect,
]

HEADER = """# Results

One current table per task, generated by `python bench/results_page.py` from the JSON files under
`bench/results/` (do not edit this page by hand; CI checks that it matches the JSON). Each table names the
command that produced it. `python` is the project's virtual environment (`source scripts/env.sh` sets
`$VENV`). Earlier runs and dead ends are in `docs/notes/`.
"""


def render() -> str:
    parts = [HEADER]
    for make in SECTIONS:
        s = make()
        if s is None:
            continue
        parts.append(f"## {s.title}\n\n```bash\n{s.command}\n```\n\nJSON: `{s.source}`. Machine: {s.machine}.\n\n"
                     f"{s.table}\n\n{s.reading}\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the page is not current")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE.relative_to(ROOT)} is not current: run python bench/results_page.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
