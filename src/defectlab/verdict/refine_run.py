"""``defectlab refine``: draw k labelled parts per defect type, fit the few-shot head, save it.

The labelled pool is every defect image of DATA with a mask (``test/<type>/`` in an MVTec layout). The
shots are drawn per type as whole *groups* (physical parts: ``group_rule`` of ``defectlab.data.groups``, or
a CSV ``groups`` with ``path`` and ``tile``/``group`` columns, paths relative to DATA), never single shots
of a part; ``shots.json`` in the output lists the images used, so an evaluation can leave them out.
Negatives: good training images the detector was fitted on (at most ``max_good``); the refined threshold:
the detector run's held-out good images (the same ones that set its deployable threshold).

Output folder: ``refine.safetensors`` (head weights and buffers), ``refine.json`` (classes, width, shots,
threshold, the detector's hash and preprocessing it was trained on, the hash of the weights).
"""

from __future__ import annotations

import csv
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from defectlab.anomaly.detector import Detector, sha256_file
from defectlab.anomaly.runner import RunConfig, image_loader, split_train
from defectlab.config import atomic_path, from_dict, load_yaml, to_dict, write_json
from defectlab.data.groups import group_keys
from defectlab.data.index import GOOD, SampleRecord, open_dataset
from defectlab.errors import BadInputError, ConfigError
from defectlab.verdict.fewshot import RefineConfig, Refiner, embed, grid_target, head_input

FORMAT = "defectlab-fewshot-head/1"
REFINE_META = "refine.json"
REFINE_FILE = "refine.safetensors"
log = logging.getLogger(__name__)


@dataclass
class Features:
    """The detector's view of some images, at its input size: what the head trains and is measured on."""

    records: list[SampleRecord]
    emb: list[torch.Tensor]  # (C, h, w) float16 patch features
    maps: list[torch.Tensor]  # (H, W) detector maps
    scores: list[float]  # detector image scores
    masks: list[torch.Tensor]  # (H, W) bool ground truth at the input size


def collect(det: Detector, records: Sequence[SampleRecord], *, batch_size: int = 8) -> Features:
    """One backbone pass per image (``fewshot.embed``), in the detector's own batching."""
    feats = Features(list(records), [], [], [], [])
    for batch in image_loader(list(records), det.preprocess, RunConfig(batch_size=batch_size)):
        emb, out = embed(det, batch.image)
        feats.emb += [e.half() for e in emb]
        feats.maps += list(out.maps)
        feats.scores += out.scores.tolist()
        feats.masks += [m[0] > 0.5 for m in batch.mask]
    return feats


def training_pairs(
    feats: Features, idx: Sequence[int], classes: list[str], pixel_threshold: float
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    xs, ys = [], []
    for i in idx:
        x = head_input(feats.emb[i][None].float(), feats.maps[i][None], pixel_threshold)[0]
        rec = feats.records[i]
        t = classes.index(rec.defect_type) + 1 if rec.defect_type != GOOD else 0
        xs.append(x)
        ys.append(grid_target(feats.masks[i].numpy(), tuple(x.shape[-2:]), t, len(classes)))
    return xs, ys


def draw_shots(
    records: Sequence[SampleRecord], keys: Sequence[str], shots: int | str, seed: int
) -> list[int]:
    """Indices of ``shots`` groups per defect type (``"half"``: half of each type's groups, rounded up)."""
    by_type: dict[str, dict[str, list[int]]] = {}
    for i, (r, k) in enumerate(zip(records, keys, strict=True)):
        by_type.setdefault(r.defect_type, {}).setdefault(k, []).append(i)
    rng = random.Random(seed)
    picked: list[int] = []
    for t in sorted(by_type):
        groups = sorted(by_type[t])
        rng.shuffle(groups)
        n = (len(groups) + 1) // 2 if shots == "half" else int(shots)
        if n > len(groups) - (1 if shots != "half" else 0) and shots != "half":
            raise ConfigError(
                f"{t}: {shots} labelled parts asked for, only {len(groups)} found "
                "(at least one must stay out for testing)"
            )
        for g in groups[:n]:
            picked += by_type[t][g]
    return sorted(picked)


def read_groups(csv_path: Path, root: Path, paths: Sequence[Path]) -> list[str]:
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise BadInputError(csv_path, f"cannot read ({exc.strerror})") from None
    col = "tile" if rows and "tile" in rows[0] else "group"
    if not rows or "path" not in rows[0] or col not in rows[0]:
        raise BadInputError(csv_path, "expected columns 'path' and 'tile' (or 'group')")
    table = {r["path"]: f"{r[col]}" for r in rows}
    out = []
    for p in paths:
        rel = p.resolve().relative_to(root.resolve()).as_posix()
        if rel not in table:
            raise BadInputError(csv_path, f"no group for {rel}")
        out.append(table[rel])
    return out


def refine_run(
    data: str | Path,
    anomaly_run: str | Path,
    out: str | Path,
    cfg: RefineConfig,
    *,
    group_rule: str = "",
    groups: str | Path | None = None,
    half: bool = False,
) -> Refiner:
    det = Detector.load(anomaly_run)
    index = open_dataset(data)
    run_cfg = (
        from_dict(RunConfig, load_yaml(Path(anomaly_run) / "config.yaml"), where="config.yaml")
        if (Path(anomaly_run) / "config.yaml").is_file()
        else RunConfig(data=str(data))
    )
    fit_recs, hold_recs = split_train(index, run_cfg)
    pool = [r for r in index.records if r.defect_type != GOOD and r.mask_path is not None]
    if not pool:
        raise BadInputError(index.root, "no defect images with masks to learn from")
    classes = sorted({r.defect_type for r in pool})
    keys = (
        read_groups(Path(groups), index.root, [r.path for r in pool])
        if groups
        else group_keys([r.path for r in pool], group_rule)
    )
    chosen = (
        draw_shots(pool, keys, "half" if half else cfg.shots, cfg.seed) if (half or cfg.shots > 0) else []
    )
    rng = random.Random(cfg.seed)
    negatives = rng.sample(fit_recs, min(cfg.max_good, len(fit_recs)))
    probe = hold_recs or fit_recs
    if not hold_recs and cfg.shots + half > 0:
        log.warning("%s held out no good images: the refined threshold comes from images the detector was fitted "
                    "on, which score low, so it will flag more new good parts than it should; fit the anomaly "
                    "run with a hold-out (its default)", anomaly_run)
    feats = collect(det, [pool[i] for i in chosen] + negatives + probe)
    n_train = len(chosen) + len(negatives)
    head = Refiner(feats.emb[0].shape[0] + 1 if feats.emb else 1, classes, cfg.hidden)
    if chosen:
        xs, ys = training_pairs(feats, range(n_train), classes, det.thresholds.pixel)
        head.fit(xs, ys, cfg, shots=cfg.shots if not half else max(1, len(chosen)))
        maxima = [
            float(head.refine(feats.emb[i][None].float(), _out(feats, i), det.thresholds.pixel)[0].max())
            for i in range(n_train, len(feats.records))
        ]
        head.set_threshold(maxima, cfg)
    save_refiner(head, out, det, anomaly_run, cfg, shots_used=[str(pool[i].path) for i in chosen], half=half)
    return head


def _out(feats: Features, i: int):
    from defectlab.anomaly.base import AnomalyOutput

    return AnomalyOutput(torch.tensor([feats.scores[i]]), feats.maps[i][None])


def save_refiner(
    head: Refiner,
    out: str | Path,
    det: Detector,
    anomaly_run: str | Path,
    cfg: RefineConfig,
    *,
    shots_used: list[str],
    half: bool = False,
) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in head.state_dict().items()}
    with atomic_path(out / REFINE_FILE) as tmp:
        save_file(state, str(tmp))
        digest = sha256_file(tmp)
    det_meta = json.loads((Path(anomaly_run) / "detector.json").read_text())
    write_json(out / "shots.json", {"images": shots_used, "half": half})
    write_json(
        out / REFINE_META,
        {
            "format": FORMAT,
            **head.describe(),
            "config": to_dict(cfg),
            "preprocess": asdict(det.preprocess),
            "detector_sha256": det_meta["model_sha256"],
            "model_file": REFINE_FILE,
            "model_sha256": digest,
        },
    )
    return out


def load_refiner(folder: str | Path) -> Refiner:
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path = folder / REFINE_META
    if not meta_path.is_file():
        raise BadInputError(
            folder, f"not a few-shot head folder (no {REFINE_META}; make one with 'defectlab refine')"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(meta_path, f"unreadable ({exc})") from None
    if meta.get("format") != FORMAT:
        raise BadInputError(meta_path, f"unknown few-shot head format (expected {FORMAT})")
    path = folder / meta.get("model_file", REFINE_FILE)
    if not path.is_file() or sha256_file(path) != meta.get("model_sha256"):
        raise BadInputError(
            path, "missing, or checksum mismatch: the head's weights were modified; refusing them"
        )
    try:
        head = Refiner(int(meta["in_channels"]), meta["classes"], int(meta["hidden"]))
        head.load_state_dict(load_file(str(path)), strict=True)
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise BadInputError(folder, f"cannot restore the few-shot head ({type(exc).__name__})") from None
    return head.eval()
