"""``defectlab data describe``: the dataset report every user starts with.

Sizes and modes come from image headers (no pixel decoding); only masks are decoded, for their
coverage. The report is a plain dict (schema in docs/dataset_report.md, ``schema_version`` below),
rendered as rich tables, Markdown, a class-distribution bar chart and a sample grid with mask outlines.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from defectlab.config import atomic_path, atomic_write_text, write_json
from defectlab.data.index import GOOD, DatasetIndex, find_categories, is_mvtec_category, open_dataset
from defectlab.data.io import load_image, load_mask, read_info
from defectlab.errors import BadInputError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, "all": 3}


def _num(x: float) -> float:
    return round(float(x), 4)


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": _num(min(values)), "median": _num(statistics.median(values)),
            "mean": _num(statistics.fmean(values)), "max": _num(max(values))}


def _skip_or_raise(exc: BadInputError, lenient: bool, skipped: list[tuple[Path, str]]) -> None:
    if not lenient:
        raise exc
    log.warning("%s: %s; skipped", exc.path, exc.problem)
    skipped.append((exc.path, exc.problem))


def _imbalance(counts: dict[str, int]) -> dict[str, Any] | None:
    counts = {c: n for c, n in counts.items() if n > 0}
    if not counts:
        return None
    big = max(counts, key=lambda c: (counts[c], c))
    small = min(counts, key=lambda c: (counts[c], c))
    return {"ratio": _num(counts[big] / counts[small]), "largest": {"class": big, "count": counts[big]},
            "smallest": {"class": small, "count": counts[small]}}


def group_report(records: list[Any], rule: str, *, group_of: dict[str, str] | None = None,
                 fold_of: dict[str, int] | None = None) -> dict[str, Any] | None:
    """Groups (shots of one part) of the records under ``rule`` (or a manifest's ``group_of``) and the
    groups a split leaks: on two sides of train/val/test, or in two folds. None without groups."""
    from defectlab.data.groups import group_keys

    if (rule or "").strip() not in ("", "none"):
        keys = group_keys([str(r.path) for r in records], rule)
    elif group_of:
        keys = [group_of.get(str(r.path), "") for r in records]
        rule = "manifest group column"
    else:
        return None
    fold_of = fold_of or {}
    sizes: Counter[str] = Counter(keys)
    per_class: dict[str, set[str]] = {}
    sides: dict[str, set[str]] = {}
    for r, k in zip(records, keys, strict=True):
        if not k:
            continue
        per_class.setdefault(r.defect_type, set()).add(k)
        fold = fold_of.get(str(r.path))
        sides.setdefault(k, set()).add(r.split if fold is None else f"fold{fold}")
    leaks = {k: sorted(v) for k, v in sorted(sides.items()) if len(v) > 1}
    out = {"rule": rule, "groups": len(sides), "per_class": {c: len(v) for c, v in sorted(per_class.items())},
           "images_per_group": _stats([float(n) for k, n in sizes.items() if k]),
           "leaked_groups": len(leaks), "leak_examples": [{"group": k, "sides": v} for k, v in list(leaks.items())[:5]]}
    if leaks:
        k, v = next(iter(leaks.items()))
        log.warning("%d group(s) are on two sides of the split (e.g. %s in %s): scores on it measure partly "
                    "whether the model has seen that part", len(leaks), k, " and ".join(v))
    return out


def describe_index(index: DatasetIndex, *, lenient: bool = False, verify: bool = False, groups: str = "",
                   group_of: dict[str, str] | None = None, fold_of: dict[str, int] | None = None) -> dict[str, Any]:
    """The report of one dataset (MVTec category, folder layout or manifest); ``groups`` a group rule
    (or ``group_of`` a manifest's groups, ``fold_of`` its folds) adds the groups and their leaks."""
    t0 = time.perf_counter()
    skipped = list(index.skipped)
    infos = {}
    for r in tqdm(index.records, desc=f"{index.name}: headers", leave=False, disable=None):
        try:
            infos[r.path] = read_info(r.path)
            if verify:
                load_image(r.path, "L")
        except BadInputError as exc:
            _skip_or_raise(exc, lenient, skipped)
    records = [r for r in index.records if r.path in infos]
    if not records:
        raise BadInputError(index.root, "no readable images")

    coverage: dict[str, list[float]] = {}
    for r in tqdm([r for r in records if r.mask_path is not None], desc=f"{index.name}: masks",
                  leave=False, disable=None):
        info = infos[r.path]
        try:
            mask = load_mask(r.mask_path, size=(info.width, info.height))  # type: ignore[arg-type]
        except BadInputError as exc:
            _skip_or_raise(exc, lenient, skipped)
            continue
        coverage.setdefault(r.defect_type, []).append(100.0 * float(mask.mean()))

    splits: dict[str, Counter[str]] = {}
    for r in records:
        splits.setdefault(r.split, Counter())[r.defect_type] += 1
    split_names = sorted(splits, key=lambda s: (SPLIT_ORDER.get(s, 9), s))
    defect_classes = sorted({r.defect_type for r in records} - {GOOD})
    classes = ([GOOD] if any(r.defect_type == GOOD for r in records) else []) + defect_classes
    per_class = {c: {"total": sum(splits[s][c] for s in split_names),
                     **{s: splits[s][c] for s in split_names}} for c in classes}
    split_totals = {s: {"images": sum(splits[s].values()), "good": splits[s][GOOD],
                        "defect": sum(n for c, n in splits[s].items() if c != GOOD)} for s in split_names}

    widths = [infos[r.path].width for r in records]
    heights = [infos[r.path].height for r in records]
    sizes = Counter((infos[r.path].width, infos[r.path].height) for r in records)
    aspects = [w / h for w, h in zip(widths, heights, strict=True)]
    no_mask = Counter(r.defect_type for r in records if r.defect_type != GOOD and r.mask_path is None)

    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "dataset",
        "dataset": {"name": index.name, "root": str(Path(index.root).resolve()), "layout": index.layout},
        "num_images": len(records),
        "classes": classes,
        "defect_classes": defect_classes,
        "num_defect_classes": len(defect_classes),
        "splits": {s: dict(sorted(splits[s].items(), key=lambda kv: (kv[0] != GOOD, kv[0])))
                   for s in split_names},
        "split_totals": split_totals,
        "per_class": per_class,
        "image_size": {
            "width": _stats(widths), "height": _stats(heights), "distinct_sizes": len(sizes),
            "most_common": [{"width": w, "height": h, "count": n} for (w, h), n in sizes.most_common(5)],
            "aspect_ratio": {**_stats(aspects),
                             "square_images": sum(1 for w, h in zip(widths, heights, strict=True) if w == h)},
        },
        "modes": dict(Counter(infos[r.path].mode for r in records).most_common()),
        "channels": {str(k): v for k, v in sorted(Counter(infos[r.path].channels for r in records).items())},
        "formats": dict(Counter(r.path.suffix.lower().lstrip(".") for r in records).most_common()),
        "mask_coverage": {c: {"masks": len(v), **_stats(v), "empty_masks": sum(1 for x in v if x == 0)}
                          for c, v in sorted(coverage.items())},
        "imbalance": {"all_classes": _imbalance({c: per_class[c]["total"] for c in classes}),
                      "defect_classes": _imbalance({c: per_class[c]["total"] for c in defect_classes})},
        "images_without_masks": {"good": per_class.get(GOOD, {}).get("total", 0),
                                 "defect": sum(no_mask.values()),
                                 "defect_by_class": dict(sorted(no_mask.items()))},
        "skipped": [{"path": str(p), "problem": why} for p, why in skipped],
        "groups": group_report(records, groups, group_of=group_of, fold_of=fold_of),
        "seconds": _num(time.perf_counter() - t0),
    }
    return report


def open_datasets(path: str | Path, *, lenient: bool = False,
                  mask_dir: str | Path | None = None) -> tuple[bool, dict[str, DatasetIndex]]:
    """(is_root, {name: index}): a root of several MVTec categories gives one index per category; a
    ``.csv`` file is read as a split manifest."""
    path = Path(path)
    if path.is_dir() and not is_mvtec_category(path) and find_categories(path):
        return True, {p.name: open_dataset(p, lenient=lenient) for p in find_categories(path)}
    if path.is_file() and path.suffix.lower() == ".csv":
        from defectlab.data.split import read_manifest

        index = read_manifest(path)
        return False, {index.name: index}
    index = open_dataset(path, lenient=lenient, mask_dir=mask_dir)
    return False, {index.name: index}


def describe_path(path: str | Path, *, lenient: bool = False, verify: bool = False,
                  mask_dir: str | Path | None = None,
                  groups: str = "") -> tuple[dict[str, Any], dict[str, DatasetIndex]]:
    """(report, indexes): one dataset's report, or for a root of several MVTec categories one report per
    category plus a summary. ``groups``: a group rule (a manifest's own group column is used without one)."""
    is_root, indexes = open_datasets(path, lenient=lenient, mask_dir=mask_dir)
    extra: dict[str, Any] = {}
    if Path(path).is_file() and Path(path).suffix.lower() == ".csv":
        from defectlab.data.split import manifest_folds, manifest_groups

        extra = {"group_of": manifest_groups(path), "fold_of": manifest_folds(path)}
    reports = {name: describe_index(idx, lenient=lenient, verify=verify, groups=groups, **extra)
               for name, idx in indexes.items()}
    if not is_root:
        return next(iter(reports.values())), indexes
    return {"schema_version": SCHEMA_VERSION, "kind": "root", "root": str(Path(path).resolve()),
            "categories": reports, "summary": [_summary_row(r) for r in reports.values()]}, indexes


def _summary_row(rep: dict[str, Any]) -> dict[str, Any]:
    imb = rep["imbalance"]["all_classes"] or {}
    return {"name": rep["dataset"]["name"], "images": rep["num_images"],
            "defect_classes": rep["num_defect_classes"],
            **{s: t["images"] for s, t in rep["split_totals"].items()},
            "width": f"{rep['image_size']['width']['min']:g}-{rep['image_size']['width']['max']:g}",
            "height": f"{rep['image_size']['height']['min']:g}-{rep['image_size']['height']['max']:g}",
            "modes": ", ".join(rep["modes"]), "imbalance": imb.get("ratio")}


# ----------------------------------------------------------------------------------- rendering

def _rng(d: dict[str, float]) -> str:
    return f"{d['min']:g} / {d['median']:g} / {d['max']:g}"


def _fmt_imbalance(d: dict[str, Any] | None) -> str:
    if not d:
        return "n/a"
    return (f"{d['ratio']:g} ({d['largest']['class']} {d['largest']['count']} / "
            f"{d['smallest']['class']} {d['smallest']['count']})")


def _size_lines(rep: dict[str, Any]) -> list[tuple[str, str]]:
    s = rep["image_size"]
    common = ", ".join(f"{c['width']}x{c['height']} ({c['count']})" for c in s["most_common"])
    imb = rep["imbalance"]
    nm = rep["images_without_masks"]
    return [
        ("dataset", f"{rep['dataset']['name']} ({rep['dataset']['layout']}) {rep['dataset']['root']}"),
        ("images", str(rep["num_images"])),
        ("train/test distribution", "; ".join(
            f"{sp} {t['images']} ({100 * t['images'] / rep['num_images']:.1f}%: "
            f"good {t['good']}, defect {t['defect']})"
            for sp, t in rep["split_totals"].items())),
        ("defect classes", f"{rep['num_defect_classes']}: {', '.join(rep['defect_classes']) or '-'}"),
        ("width min/median/max", _rng(s["width"])),
        ("height min/median/max", _rng(s["height"])),
        ("aspect w/h min/median/max", _rng(s["aspect_ratio"])),
        ("distinct sizes", f"{s['distinct_sizes']}; most common: {common}"),
        ("modes", ", ".join(f"{m} {n}" for m, n in rep["modes"].items())),
        ("channels", ", ".join(f"{c}ch {n}" for c, n in rep["channels"].items())),
        ("formats", ", ".join(f"{f} {n}" for f, n in rep["formats"].items())),
        ("imbalance (all classes)", _fmt_imbalance(imb["all_classes"])),
        ("imbalance (defect classes)", _fmt_imbalance(imb["defect_classes"])),
        ("images without masks", f"good {nm['good']} (all-zero masks), defect {nm['defect']}"),
        ("skipped", str(len(rep["skipped"]))),
        *_group_lines(rep.get("groups")),
    ]


def _group_lines(g: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not g:
        return []
    per = ", ".join(f"{c} {n}" for c, n in g["per_class"].items())
    lines = [("groups", f"{g['groups']} ({g['rule']}): {per}; images per group {_rng(g['images_per_group'])}")]
    if g["leaked_groups"]:
        ex = g["leak_examples"][0]
        lines.append(("WARNING: split leaks groups", f"{g['leaked_groups']} group(s) on two sides "
                      f"(e.g. {ex['group']}: {' and '.join(ex['sides'])})"))
    return lines


def _class_rows(rep: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    splits = list(rep["split_totals"])
    head = ["class", *splits, "total", "masks", "empty", "area % mean", "min", "max"]
    rows = []
    for c in rep["classes"]:
        cov = rep["mask_coverage"].get(c, {})
        pct = [f"{cov[k]:.2f}" if k in cov else "-" for k in ("mean", "min", "max")]
        rows.append([c, *(str(rep["per_class"][c][s]) for s in splits), str(rep["per_class"][c]["total"]),
                     str(cov.get("masks", 0)), str(cov.get("empty_masks", "-")), *pct])
    rows.append(["all", *(str(rep["split_totals"][s]["images"]) for s in splits), str(rep["num_images"]),
                 str(sum(v["masks"] for v in rep["mask_coverage"].values())),
                 str(sum(v["empty_masks"] for v in rep["mask_coverage"].values())), "", "", ""])
    return head, rows


def rich_tables(report: dict[str, Any]) -> list[Any]:
    from rich.table import Table

    if report["kind"] == "root":
        t = Table(title=f"MVTec root {report['root']}")
        keys = list(dict.fromkeys(k for row in report["summary"] for k in row))
        for k in keys:
            t.add_column(k)
        for row in report["summary"]:
            t.add_row(*(str(row.get(k, "")) for k in keys))
        return [t] + [x for rep in report["categories"].values() for x in rich_tables(rep)]
    name = report["dataset"]["name"]
    head, rows = _class_rows(report)
    t1 = Table(title=f"{name}: images per split and class, mask coverage")
    for i, h in enumerate(head):
        t1.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for i, row in enumerate(rows):
        t1.add_row(*row, end_section=i == len(rows) - 2)
    t2 = Table(title=f"{name}: summary", show_header=False)
    t2.add_column(style="bold", no_wrap=True)
    t2.add_column()
    for k, v in _size_lines(report):
        t2.add_row(k, v)
    return [t1, t2]


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def markdown(report: dict[str, Any]) -> str:
    if report["kind"] == "root":
        keys = list(dict.fromkeys(k for row in report["summary"] for k in row))
        parts = [f"# Dataset report: {report['root']}\n",
                 _md_table(keys, [[str(r.get(k, "")) for k in keys] for r in report["summary"]]), ""]
        parts += [f"See `{name}/report.md` for each category." for name in report["categories"]]
        return "\n".join(parts) + "\n"
    head, rows = _class_rows(report)
    return "\n".join([
        f"# Dataset report: {report['dataset']['name']}\n",
        "## Images per split and class, mask coverage (defect area % of the image)\n",
        _md_table(head, rows), "\n## Summary\n",
        _md_table(["", ""], [[k, v] for k, v in _size_lines(report)]),
        "\n![class distribution](class_distribution.png)\n\n![samples](samples.png)\n",
    ])


def plot_class_distribution(report: dict[str, Any], out: Path) -> None:
    from matplotlib.figure import Figure

    classes, splits = report["classes"], list(report["split_totals"])
    width = 0.8 / max(1, len(splits))
    fig = Figure(figsize=(max(5.0, 1.1 * len(classes) + 2), 4), layout="constrained")
    ax = fig.subplots()
    for i, s in enumerate(splits):
        xs = np.arange(len(classes)) + (i - (len(splits) - 1) / 2) * width
        ys = [report["per_class"][c][s] for c in classes]
        bars = ax.bar(xs, ys, width, label=s)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(np.arange(len(classes)), classes, rotation=30 if len(classes) > 6 else 0)
    ax.set_ylabel("images")
    ax.set_title(f"{report['dataset']['name']}: images per class and split")
    ax.legend()
    _save_fig(fig, out)


def plot_samples(index: DatasetIndex, out: Path, *, per_class: int = 4, thumb: int = 160) -> None:
    """A grid: a few images per class (evenly spread over the class), mask outlines in red."""
    from matplotlib.figure import Figure
    from PIL import Image
    from scipy import ndimage

    classes = index.classes
    fig = Figure(figsize=(1.9 * per_class, 1.9 * len(classes)), layout="constrained")
    axes = fig.subplots(len(classes), per_class, squeeze=False)
    for row, cls in enumerate(classes):
        recs = sorted(index.select(defect_types=[cls]), key=lambda r: str(r.path))
        spread = np.unique(np.linspace(0, len(recs) - 1, min(per_class, len(recs))).round())
        picks = [recs[int(i)] for i in spread]
        for col in range(per_class):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(cls, fontsize=9)
            if col >= len(picks):
                ax.axis("off")
                continue
            rec = picks[col]
            try:
                img = Image.fromarray(load_image(rec.path, "RGB"))
                mask = load_mask(rec.mask_path, size=img.size) if rec.mask_path else None
            except BadInputError as exc:
                ax.set_title("unreadable", fontsize=7)
                log.warning("%s", exc)
                continue
            scale = thumb / max(img.size)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            arr = np.asarray(img.resize(size, Image.BILINEAR)).copy()
            if mask is not None:
                m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
                edge = ndimage.binary_dilation(m ^ ndimage.binary_erosion(m))
                arr[edge] = (255, 0, 0)
            ax.imshow(arr)
            name = rec.path.stem if len(rec.path.stem) <= 20 else rec.path.stem[:19] + "…"
            ax.set_title(f"{name} {img.width}x{img.height}", fontsize=6)
    fig.suptitle(f"{index.name}: samples (mask outlines in red)", fontsize=10)
    _save_fig(fig, out)


def _save_fig(fig: Any, out: Path) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format=out.suffix.lstrip(".") or "png")


def write_report(report: dict[str, Any], out: str | Path, indexes: dict[str, DatasetIndex]) -> list[Path]:
    """report.json, report.md, class_distribution.png, samples.png (per category below a root)."""
    out = Path(out)
    written: list[Path] = []
    if report["kind"] == "root":
        for name, rep in report["categories"].items():
            written += write_report(rep, out / name, {name: indexes[name]})
    else:
        index = indexes[report["dataset"]["name"]]
        bad = {Path(s["path"]) for s in report["skipped"]}
        kept = [r for r in index.records if r.path not in bad and r.mask_path not in bad]
        plot_class_distribution(report, out / "class_distribution.png")
        plot_samples(DatasetIndex(index.root, index.name, index.layout, kept), out / "samples.png")
        written += [out / "class_distribution.png", out / "samples.png"]
    write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", markdown(report))
    return written + [out / "report.json", out / "report.md"]
