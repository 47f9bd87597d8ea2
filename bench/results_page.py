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
    d = load("anomaly_tile_split.json")
    if d is None or "metrics" not in d:
        return None
    rows = []
    for t, m in d["metrics"].items():
        rows.append([f"{t} ({m.get('n_images', '')})", f3(m.get("image_auroc")), f3(m.get("pixel_auroc")),
                     f3(m.get("pixel_aupro")), pct(m.get("deployable_false_alarm_rate")),
                     pct(m.get("deployable_recall"))])
    th, mo = d["thresholds"], d["model"]
    lo, hi = th.get("false_alarm_interval") or (None, None)
    groups = load("auto_groups_magnetic_tile.json")
    grouping = ""
    if groups:
        g = groups["scores"]
        grouping = (f" The automatic grouping finds {g['n_groups']} groups among the {g['n_images']} training images "
                    f"of {g['n_tiles']} tiles and keeps {pct(g['pair_recall_unambiguous'], 0)} of the same-tile "
                    "pairs of tiles shot once per lighting together (`bench/auto_groups.py`).")
    return Section(
        "Anomaly detection from good images: magnetic_tile, split by tile",
        "python bench/anomaly_default.py   # = defectlab anomaly fit ../shared/data/magnetic_tile --out RUN",
        "bench/results/anomaly_tile_split.json", load_text(d["machine"]) + f"; peak RSS {d['peak_rss_gb']} GB, "
        f"fit {d['training']['fit_seconds']:.0f} s, {d['ms_per_image']:.0f} ms / image",
        table(["test images (n)", "image AUROC", "pixel AUROC", "AUPRO (FPR ≤ 0.3)",
               "false alarms at the deployable threshold", "recall at it"], rows),
        f"The default command ({mo['method']}, {mo['backbone']}, {mo['resize']} input), fitted on good training "
        f"tiles only and tested on tiles it never saw; each row is one defect type against the good test images. "
        f"The deployable threshold targets {pct(th.get('false_alarm'), 0)} false alarms; held out: "
        f"{d['training']['holdout']}; the fit expected {pct(th.get('expected_false_alarm'))} on new parts "
        f"(90% interval {pct(lo)}-{pct(hi)}).{grouping} `uneven` bands are most of the defect pixels and "
        "their interior looks like good surface, which caps pixel AUROC for a good-only detector.")


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
        "raise false alarms. Holding out whole tiles gives a threshold that holds on new parts, at the cost "
        "of recall; `anomaly fit` now does this by default (`--holdout-group auto` finds the groups from the "
        "pixels; a regex or a CSV names them).")


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
    model = f"{d['model']} ({d['weights']}, {d['freeze']} stages frozen), {tr['image_size']} px, {tr['epochs']} epochs"
    rows = [[model,
             f"{100 * d['test_acc_mean']:.2f} ± {100 * d['test_acc_std']:.2f}", pct(d["balanced_acc_mean"], 2),
             pct(d["macro_f1_mean"], 2), f"{d['infer_ms_per_image']:.0f}"]]
    return Section(
        "Defect-type classification: NEU-DET, 5-fold",
        "python " + d["command"], "bench/results/classify_neu.json", load_text(d),
        table(["model", "test accuracy %", "balanced accuracy", "macro-F1", "ms / image"], rows),
        f"{d['dataset']['images']} images, {len(d['dataset']['classes'])} classes of 300. Each fold is tested "
        "once; the next fold picks the checkpoint, the other three train. A pretrained backbone with its early "
        "stages frozen separates these steel-surface classes almost perfectly at 64 px.")


def classify_grouped() -> Section | None:
    d = load("classify_grouped_grouped.json")
    if d is None:
        return None
    series = load("classify_grouped_series.json")
    rows = [[r["attempt"], r["changed"], f"{r['balanced_acc']:.3f} ± {r['balanced_acc_std']:.3f}",
             f"{r['macro_f1']:.3f} ± {r['macro_f1_std']:.3f}", "yes" if r["collapsed"] else "no"]
            for r in sorted(d["rows"] + (series["rows"] if series else []), key=lambda r: -r["balanced_acc"])]
    return Section(
        "Defect-type classification on a small real set: magnetic_tile, grouped 5-fold",
        d["command"], "bench/results/classify_grouped_grouped.json", d["machine"],
        table(["attempt", "what", "balanced accuracy", "macro-F1", "collapsed"], rows),
        f"{d['data']}; classes {', '.join(d['classes'])}. With every shot of a tile on one side, the task is much "
        "harder than a split by image suggests. The rows of the classic series (examples/classify_series.yaml: "
        "baseline_cnn, augmented, pretrained_frozen, dropout_cosine) ran with `--part series` (12 epochs, "
        "patience 5, bench/results/classify_grouped_series.json). Region rows crop around the ground-truth "
        "mask at test time too, and pooled rows average over it (perfect localisation; with the detector's "
        f"own regions see the verdict benchmark's rows (d) to (g)).{_probe_l2()}")


def classify_regions() -> Section | None:
    d = load("classify_regions.json")
    if d is None:
        return None
    rows = [[r["train"], r["test"], f"{r['balanced_acc']:.3f} ± {r['balanced_acc_std']:.3f}",
             f3(r["balanced_acc_where_found"])] for r in d["rows"]]
    share = ", ".join(f"{c} {pct(v)}" for c, v in d["found_share_per_class"].items())
    return Section(
        "Defect types on the detector's regions: magnetic_tile, grouped 5-fold",
        d["command"], "bench/results/classify_regions.json", d["machine"],
        table(["probe trained on", "tested on", "balanced accuracy", "where the detector finds a region"], rows),
        f"The `{d['attempt']}` attempt of examples/classify_grouped.yaml on the same folds; RUN = "
        f"{d['anomaly_run']}. The detector finds a region in {pct(d['found_share'])} of the {d['n_images']} "
        f"defect images ({share}); the last column pools those over the folds. Training on the detector's "
        "regions too is `train.regions_from: RUN` (docs/classify.md).")


def _probe_l2() -> str:
    d = load("classify_probe_l2.json")
    if d is None:
        return ""
    r = next((r for r in d["rows"] if r["attempt"] == "pooled_probe"), None)
    if r is None:
        return ""
    m, s = r["balanced_acc_mean_std"]["standardised"]["val_selected"]
    return (f" The pooled probe's L2 penalty (0.03) was picked on these test folds; picked on each fold's "
            f"validation fold instead it gives {m:.3f} ± {s:.3f} (bench/classify_probe_l2.py).")


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


def records() -> Section | None:
    over, scale = load("records_overhead.json"), load("records_scale.json")
    real = load("records_overhead_magnetic_tile.json")
    load_ = load("records_load.json")  # both backends (and recording off) in one run
    load_name = "records_load.json"
    if load_ is None:  # older layout: one run per backend
        loads = {b: load(f"records_load_{b}.json") for b in ("sqlite", "postgresql")}
        if any(loads.values()):
            first = next(d for d in loads.values() if d)
            load_ = {**first, "results": {b: d["results"][b] for b, d in loads.items() if d}}
            load_name = "records_load_{sqlite,postgresql}.json"
    if not (over or load_ or scale):
        return None
    rows, sources = [], []
    backends = ("sqlite", "postgresql", "postgresql-async-commit")

    def cost_rows(d: dict[str, Any], what: str) -> None:
        r = d["results"]
        rows.append([f"{what}: /inspect p50 ms (off: {r['off']['p50_ms']:.1f})",
                     *[f"{r[b]['p50_ms']:.1f} ({r[b]['overhead_p50_pct']:+.1f}%)" if b in r else "-"
                       for b in backends]])
        if "paired_median_diff_ms" in r.get("sqlite", {}):
            rows.append([f"{what}: paired median difference ms",
                         *[f"{r[b]['paired_median_diff_ms']:+.1f}" if b in r else "-" for b in backends]])
        if "record_wait_p50_ms" in r.get("sqlite", {}):
            rows.append([f"{what}: answer's wait for its commit, p50 ms",
                         *[f"{r[b]['record_wait_p50_ms']:.2f} ({r[b]['record_wait_pct_of_off_p50']:.1f}%)"
                           if b in r else "-" for b in backends]])
        rows.append([f"{what}: server CPU ms per request (off: {r['off']['server_cpu_ms_per_request']:.1f})",
                     *[f"{r[b]['server_cpu_ms_per_request']:.1f} ({r[b]['overhead_cpu_pct']:+.1f}%)"
                       if b in r else "-" for b in backends]])

    if over:
        sources.append("bench/results/records_overhead.json")
        cost_rows(over, f"synthetic {over['args']['image_size']} px")
    if real:
        sources.append("bench/results/records_overhead_magnetic_tile.json")
        cost_rows(real, f"magnetic_tile ({real['args']['engine']})")
    if load_:
        sources.append(f"bench/results/{load_name}")
        r = load_["results"]
        n = load_["args"]["load_requests"]

        def steady(b: str) -> str:
            s = r[b]["steady"]
            return (f"{s['errors']} errors, {s['recorded']}/{n} recorded once: {s['each_exactly_once']}, "
                    f"check ok: {s['check']['ok']}, {s['requests_per_s']:.0f} req/s")

        def killed(b: str) -> str:
            k = r[b]["sigkill"]
            return (f"{k['acknowledged_before_kill']} acknowledged, {k['acknowledged_lost']} lost, "
                    f"{k['duplicates']} duplicates, check ok: {k['check']['ok']}, "
                    f"rest after restart all recorded: {k['after_restart_all_recorded']}")

        rows.append([f"8 clients, {n} requests", *[steady(b) if b in r else "-" for b in backends]])
        rows.append(["SIGKILL mid-load, restart", *[killed(b) if b in r else "-" for b in backends]])
    if scale:
        sources.append("bench/results/records_scale.json")
        r = scale["results"]
        for key, label in (("queue_first_page", "review queue first page (+ size)"),
                           ("filtered_list", "filtered list (50 rows)")):
            rows.append([f"{r['rows']:,} rows: {label}, p50 ms",
                         *[f"{r[b][key]['p50_ms']:.0f}" if b in r else "-" for b in backends]])
    d = over or load_ or scale
    return Section(
        "Inspection records: cost, durability, scale",
        "python bench/records_bench.py --part overhead --image-size 128 --requests 300\n"
        "python bench/records_bench.py --part overhead --run RUN --engine onnx "
        "--images ../shared/data/magnetic_tile/test --requests 80 --suffix _magnetic_tile\n"
        "python bench/records_bench.py --part load --image-size 64 --load-requests 2000\n"
        "python bench/records_bench.py --part scale --rows 1000000",
        ", ".join(sources), load_text(d) + "; the machine was shared with other work",
        table(["", "SQLite", "PostgreSQL", "PostgreSQL, synchronous_commit=off"], rows),
        "Recording on vs off is measured side by side (requests alternate between the servers), so the "
        "percentages hold under the shared machine's load better than the milliseconds. The service writes "
        "the image file while the model scores, builds and commits the row on one writer thread (group "
        "commit, one connection) while the request renders its heatmap, and answers only after the commit: "
        "the answer's own wait for its commit (from the servers' access logs) is a fraction of a "
        "millisecond at the median; what remains is the recording's CPU on the same two cores (and, for "
        "PostgreSQL, the database server's CPU and WAL fsync on them too). The SIGKILL run counts requests "
        "answered 200 before the kill that are missing from the store (must be 0) and rows stored twice; "
        "the integrity check re-hashes every stored image.")


def fewshot_curve() -> Section | None:
    d = load("fewshot_magnetic_tile.json")
    if d is None:
        return None
    rows = []
    for k, e in d["summary"].items():
        for m, name in (("detector", "good-only detector"), ("fewshot", "few-shot head"),
                        ("unet", "U-Net, same labels")):
            if m in e and (m != "detector" or k in ("0", d["args"]["shots"][0])):
                pt = e[m]["per_type_pixel_auroc"]
                rows.append([k, name, f3(e[m]["pixel_auroc"]), f3(e[m]["aupro"]), f3(e[m]["image_auroc"]),
                             " / ".join(f3(pt[t]) for t in sorted(pt))])
    a = d["args"]
    return Section(
        "Few-shot refinement: magnetic_tile, k labelled tiles per type",
        f"python bench/fewshot_curve.py --anomaly-run RUN --shots {' '.join(a['shots'])} "
        f"--seeds {' '.join(map(str, a['seeds']))} --steps {a['steps']} --unet-epochs {a['unet_epochs']}",
        "bench/results/fewshot_magnetic_tile.json", d["machine"]["note"],
        table(["k", "map", "pixel AUROC", "AUPRO", "image AUROC",
               "per-type pixel AUROC (" + " / ".join(sorted(next(iter(d["summary"].values()))["detector"]
                                                          ["per_type_pixel_auroc"])) + ")"], rows),
        f"Mean over the seeds of which tiles are labelled; tested on {_tested_on(a)}; pixel metrics at the input "
        f"resolution pooled by {a['eval_stride']}. See docs/verdict.md.")


def _tested_on(a: dict) -> str:
    """What the few-shot and verdict benchmarks tested on (their ``--max-*`` options; 0 or absent = all)."""
    shots, goods = a.get("max_shots_per_tile", 0), a.get("max_good_test", 0)
    return (("the defect images of the other tiles" + (f" (at most {shots} shots per tile)" if shots else "")) +
            (f" and {goods} of the good test images" if goods else " and every good test image"))


def verdict_bench() -> Section | None:
    d = load("verdict_magnetic_tile.json")
    if d is None:
        return None
    names = {"a_classifier": "(a) classifier alone, with a good class", "b_gate": "(b) anomaly gate alone",
             "c_bundle": "(c) bundle", "d_bundle_pooled": "(d) bundle + region-pooled classifier",
             "e_bundle_pooled_only": "(e) bundle, types from the region-pooled classifier only",
             "f_bundle_pooled_regions": "(f) as (d), classifier also trained on the detector's regions",
             "g_bundle_pooled_regions_only": "(g) as (e), classifier also trained on the detector's regions"}
    rows = [[names[m], f3(v["balanced_accuracy"]), f3(v["macro_f1"]), pct(v["good_false_alarm_rate"]),
             pct(v["defect_recall"]) if "defect_recall" in v else "-", f3(v["balanced_accuracy_2class"]),
             _gated_types(d["per_seed"], m)] for m, v in d["summary"].items()]
    lat = d.get("latency")
    latency = (f"CPU latency per image, side by side: bundle {lat['bundle_ms_median']:.0f} ms, anomaly run "
               f"{lat['anomaly_run_ms_median']:.0f} ms (x{lat['ratio']:.2f}). ") if lat else ""
    return Section(
        "One verdict per part: magnetic_tile, 6 classes",
        f"python bench/verdict_bench.py --anomaly-run RUN --shots {d['args']['shots']}",
        "bench/results/verdict_magnetic_tile.json", d["machine"],
        table(["", "balanced accuracy (6 classes)", "macro-F1", "good false alarms", "defective parts flagged",
               "balanced accuracy (2)",
               "type right on the defects the gate passes (balanced)"], rows),
        f"Labelled tiles: {d['args']['shots']} per type; tested on {_tested_on(d['args'])}; mean over the seeds run: "
        f"{[r['seed'] for r in d['per_seed']]}. {latency}See docs/verdict.md.")

def _gated_types(per_seed: list[dict], variant: str) -> str:
    """Mean over the seeds of the balanced type accuracy on the defective parts a variant calls defective
    (from its confusion matrix: each defect type's row without the ``good`` column)."""
    accs = []
    for run in per_seed:
        labels, conf = run[variant]["labels"], run[variant]["confusion"]
        if "good" not in labels or "defect" in labels:  # the gate alone names no type
            return "-"
        g = labels.index("good")
        rec = [row[i] / (sum(row) - row[g]) for i, (t, row) in enumerate(zip(labels, conf, strict=True))
               if t not in ("good", "unknown", "defect") and sum(row) - row[g] > 0]
        if not rec:
            return "-"
        accs.append(sum(rec) / len(rec))
    return f3(sum(accs) / len(accs))


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


def runtime_rss() -> Section | None:
    d = load("runtime_rss.json")
    if d is None:
        return None
    names = {"torch": "torch engine",
             "onnx_before": f"ONNX engine before the runtime ({d['baseline_commit'][:7]}, same export)",
             "onnx_cli": "`defectlab serve --engine onnx`", "runtime": "`defectlab-runtime serve`"}
    rows = [[names[k], "yes" if s["torch_loaded"] else "no", f"{s['peak_rss_mb']:.0f}",
             f"{s['peak_rss_with_largest_mb']:.0f}", f"{s['p50_ms']:.0f}", f"{s['server_cpu_ms_per_request']:.0f}",
             f"{s['ready_s']:.1f}"] for k, s in d["servers"].items()]
    diff = d["max_abs_score_diff_vs_onnx_before"]["runtime"]
    return Section(
        "Torch-free runtime: serving memory and latency",
        "python bench/runtime_rss.py --run RUN --requests 120", "bench/results/runtime_rss.json", load_text(d),
        table(["server", "torch loaded", "peak RSS MB, test images", "peak RSS MB, + largest accepted",
               "/inspect p50 ms", "CPU ms / request", "ready s"], rows),
        f"The default PatchCore run on magnetic_tile, {d['requests']} requests over {d['images']} test images per "
        f"server, the servers side by side in a random order each round; then the largest image the model accepts "
        f"({d['largest_image']}). Without torch the service holds a fifth of the memory at the same latency and "
        f"CPU; scores differ from the engine before by at most {diff:.1g}. The exported scorer searches the memory "
        "bank in blocks of 512 rows, so the largest accepted image adds the blocks' and the larger backbone "
        "activations' memory, not a whole patches x bank matrix.")


def scaling_cpu() -> Section | None:
    ddp, half, fit, same = (load(f) for f in ("classify_ddp.json", "anomaly_half.json", "ray_fit.json",
                                                "devices_cpu_identity.json"))
    if not (ddp and half and fit and same):
        return None

    def acc(d: dict[str, Any], key: str) -> str:
        m = d[key]["mean"]["balanced_acc"]
        return f"{m['mean']:.3f} ± {m['std']:.3f}"

    rows = [[f"classify DDP, {name}: balanced accuracy, 1 process vs 2 (gloo), seeds {d['seeds']}",
             acc(d, "one_process"), acc(d, "two_processes")] for name, d in ddp.items()]
    rows.append(["PatchCore fit, features on a local Ray actor pool: model fit s (bank identical: "
                 f"{fit['bank_identical']})", f"{fit['model_fit_seconds']['local']:.0f}",
                 f"{fit['model_fit_seconds']['ray']:.0f}"])
    rows.append([f"anomaly test --half ({half['half_dtype'].removeprefix('torch.')} on the CPU), "
                 f"{half['n_images']} magnetic_tile images: image AUROC", f3(half["image_auroc"]["float32"]),
                 f3(half["image_auroc"]["half"])])
    return Section(
        "Scaling on the CPU: DDP, Ray feature extraction, half precision",
        "python bench/classify_ddp.py; python bench/ray_fit.py; python bench/anomaly_half.py; "
        "python bench/devices_cpu_identity.py",
        "bench/results/classify_ddp.json, bench/results/ray_fit.json, bench/results/anomaly_half.json, "
        "bench/results/devices_cpu_identity.json", "2-core CPU (x86_64) shared with other work",
        table(["", "baseline (1 process / local / float32)", "scaled (2 processes / Ray / half)"], rows),
        f"Two DDP processes train to the accuracy of one within the spread over seeds. The Ray fit builds the same "
        f"memory bank and threshold as the local one; on one 2-core machine it is slower (Ray's start-up and a "
        f"second actor competing for the same cores): it pays on a cluster. Half precision on this CPU changes "
        f"scores by {100 * half['score_rel_diff']['median']:.2f}% (median, max "
        f"{100 * half['score_rel_diff']['max']:.1f}%) and {half['verdicts_changed']} of {half['n_images']} verdicts, "
        f"and saves no time ({half['ms_per_image']['float32']:.0f} vs {half['ms_per_image']['half']:.0f} ms per "
        f"image): keep float32 on a CPU. With `--device auto` on this CPU, PatchCore, PaDiM and kNN fits and scores "
        f"and a classify run are identical to the tree before devices existed: {same['identical']}. "
        "No GPU run yet: `bash bench/gpu_check.sh` records one where a GPU is available.")


def soak() -> Section | None:
    d = load("soak_magnetic_tile.json")
    if d is None:
        return None
    rows = []
    for engine in ("torch", "onnx"):
        s, m = d.get(f"soak_{engine}"), d.get(f"memory_{engine}")
        if s is None:
            continue
        lat, rss = s["latency_200_ms"] or {}, s["rss_mb"]
        big = (m or {}).get("largest_accepted", {})
        rows.append([engine, s["requests"], s["n_5xx"], f"{lat.get('p50', 0):.0f}", f"{lat.get('p95', 0):.0f}",
                     f"{rss['mid']:.0f} -> {rss['end']:.0f} ({rss['growth_last_half_pct']:+.1f}%)",
                     f"{(m or {}).get('typical', {}).get('peak_mb', 0):.0f} / {big.get('peak_mb', 0):.0f} MB "
                     f"({big.get('peak_vs_typical', 0):.2f}x)"])
    long = load("soak_magnetic_tile_20k.json") or {}
    long_runs = {e: long[f"soak_{e}"] for e in ("torch", "onnx") if f"soak_{e}" in long}
    for engine, run in long_runs.items():
        lat, rss = run["latency_200_ms"], run["rss_mb"]
        rows.append([f"{engine}, long run", run["requests"], run["n_5xx"], f"{lat['p50']:.0f}", f"{lat['p95']:.0f}",
                     f"{rss['mid']:.0f} -> {rss['end']:.0f} ({rss['growth_last_half_pct']:+.1f}%)", "-"])
    fixed = d.get("memory_torch_letterbox", {})
    poison = d.get("inspect_poison")
    mix = d["mix"]
    n5 = sum(d[f"soak_{e}"]["n_5xx"] for e in ("torch", "onnx") if f"soak_{e}" in d)
    growth = max(abs(d[f"soak_{e}"]["rss_mb"]["growth_last_half_pct"]) for e in ("torch", "onnx") if f"soak_{e}" in d)
    reading = (f"8 clients cycle through {mix['real']} real magnetic_tile test images, {mix['malformed']} malformed "
               f"uploads (every kind) and {mix['large']} largest-accepted images for {d['minutes_per_engine']:g} "
               "minutes per engine against a `defectlab serve` subprocess. "
               f"{n5} responses were 5xx; RSS changed by at most "
               f"{growth:.1f}% over the second half. Peak RSS of one request: a typical image vs the largest "
               f"accepted ({d['largest_accepted'][0]} px square at this run's scale), each in a fresh server.")
    if fixed:
        reading += (f" Same model with a fixed-size input: a 6300x6300 PNG (the file limit decides) peaks at "
                    f"{fixed['6300x6300.png']['peak_mb']:.0f} MB vs {fixed['typical']['peak_mb']:.0f} MB typical "
                    f"in {fixed['6300x6300.png']['latency_ms'] / 1000:.1f} s; a 6300x6300 JPEG (draft mode) "
                    f"{fixed['6300x6300.jpg']['peak_mb']:.0f} MB.")
    if long_runs:
        sent = ", ".join(f"{r['requests']:,} on {e} in {r['wall_s'] / 60:.0f} min" for e, r in long_runs.items())
        reading += (f" The long runs (`--requests {long['requests_asked']}`, one per engine, "
                    f"bench/results/soak_magnetic_tile_20k.json; {long['machine']}) sent the same mix, {sent}: "
                    f"{sum(r['n_5xx'] for r in long_runs.values())} responses were 5xx and RSS changed by at most "
                    f"{max(abs(r['rss_mb']['growth_last_half_pct']) for r in long_runs.values()):.1f}% over each "
                    "run's second half.")
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
    anomaly_tile_split, threshold_holdout, anomalib_side_by_side, classify_neu, classify_grouped, classify_regions,
    lambda: _longtail("neu"), lambda: _longtail("magnetic_tile"), segmentation, serving, soak, runtime_rss,
    records, scaling_cpu,
    fewshot_curve, verdict_bench, nn_search, ray_inspect,
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
