"""An inspection bundle: one folder that gives one verdict per part (``defectlab.verdict.rule``).

    >>> build_bundle("runs/tile", "bundles/tile", refine="runs/tile_k5", classify_run="runs/cls")
    >>> bundle = Bundle.load("bundles/tile")        # refuses tampered or inconsistent parts
    >>> bundle.predict_images(["a.png"])[0].extra    # verdict, type, probabilities, regions, scores

Layout: ``bundle.json`` (format, the rule, the classes, and the sha256 of every part file), ``anomaly/``
(the good-only detector: ``detector.json`` + ``model.safetensors``), optionally ``refine/`` (the few-shot
head of ``defectlab refine``: ``refine.json`` + ``refine.safetensors``) and ``classifier/best.pt`` (the
checkpoint of a classify run). Every file's hash is checked before anything is loaded; parts that
disagree (a head trained on another detector, another image size or preprocessing; a classifier with
other defect types than the head) are refused with one line, at build and at load.

``defectlab inspect`` and ``defectlab serve`` load a bundle folder where they take an anomaly run
(``inspect.engine.load_engine``); ``predict_images`` returns ``Prediction``s whose ``extra`` carries the
verdict. The ONNX engine serves a bundle without a few-shot head (the head needs the detector's features).
A region-guided classifier (``train.input: region`` or ``pooled``) classifies each region the rule finds
(its crop, or its features averaged over the region's mask); a whole-image classifier classifies the image.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from defectlab.anomaly.base import AnomalyOutput, Prediction
from defectlab.anomaly.detector import META_FILE, Detector, same_size_runs, sha256_file
from defectlab.anomaly.geometry import map_to_original
from defectlab.config import write_json
from defectlab.errors import BadInputError, ConfigError
from defectlab.inspect.engine import BUNDLE_FILE
from defectlab.verdict.fewshot import Refiner, embed
from defectlab.verdict.refine_run import REFINE_META, load_refiner
from defectlab.verdict.rule import DEFECT, RegionProbs, Verdict, VerdictRule, decide

log = logging.getLogger(__name__)

FORMAT = "defectlab-inspection-bundle/1"
GOOD_NAMES = ("good", "ok")


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / BUNDLE_FILE).is_file()


def _classifier_classes(checkpoint: Path, anomaly_run: Path | None = None) -> list[str]:
    """The checkpoint's classes; with ``anomaly_run`` (building a bundle), warns when a region-pooled
    classifier learned another detector's regions (``train.regions_from``) than that run's."""
    try:
        config = torch.load(checkpoint, map_location="cpu", weights_only=True)["config"]
        classes = list(config["classes"])
    except (OSError, RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as exc:
        raise BadInputError(checkpoint, f"not a classify checkpoint ({type(exc).__name__})") from None
    learned = (config.get("train") or {}).get("regions_from")
    if anomaly_run is not None and learned and Path(learned).resolve() != anomaly_run.resolve():
        log.warning("%s: the classifier learned the regions of the anomaly run %s, not of this bundle's %s; "
                    "its types may suffer (retrain with train.regions_from: %s)", checkpoint, learned,
                    anomaly_run, anomaly_run)
    return classes


def check_parts(
    root: Path,
    det_meta: dict[str, Any],
    refine_meta: dict[str, Any] | None,
    classifier_classes: list[str] | None,
) -> list[str]:
    """The defect types of the bundle; raises ``BadInputError`` (one line) when the parts disagree."""
    classes: list[str] = []
    if refine_meta is not None:
        classes = list(refine_meta["classes"])
        pre, rpre = det_meta["preprocess"], refine_meta["preprocess"]
        if list(pre["image_size"]) != list(rpre["image_size"]) or pre.get("scale") != rpre.get("scale"):
            raise BadInputError(
                root,
                f"parts disagree on image size: the few-shot head was trained at "
                f"{rpre['image_size']} (scale {rpre.get('scale')}), the detector uses "
                f"{pre['image_size']} (scale {pre.get('scale')})",
            )
        if {k: v for k, v in pre.items() if k not in ("image_size", "scale")} != {
            k: v for k, v in rpre.items() if k not in ("image_size", "scale")
        }:
            raise BadInputError(
                root,
                "parts disagree on preprocessing: the few-shot head was trained with "
                f"{rpre}, the detector uses {pre}",
            )
        if refine_meta.get("detector_sha256") != det_meta.get("model_sha256"):
            raise BadInputError(
                root,
                "parts disagree: the few-shot head was trained on the features of another "
                "detector (its detector hash differs); refine it on this anomaly run",
            )
    if classifier_classes is not None:
        types = [c for c in classifier_classes if c not in GOOD_NAMES]
        if classes and sorted(types) != sorted(classes):
            raise BadInputError(
                root,
                f"parts disagree on classes: the classifier knows {sorted(types)}, "
                f"the few-shot head {sorted(classes)}",
            )
        classes = classes or types
    return classes


def build_bundle(
    anomaly_run: str | Path,
    out: str | Path,
    *,
    refine: str | Path | None = None,
    classify_run: str | Path | None = None,
    attempt: str | None = None,
    rule: VerdictRule = VerdictRule(),
) -> Path:
    """Copy the parts into ``out`` (written to a temporary folder first, then moved into place)."""
    from defectlab.classify.predict import pick_checkpoint

    anomaly_run, out = Path(anomaly_run), Path(out)
    Detector.load(anomaly_run)  # checks the run and its hash
    det_meta = json.loads((anomaly_run / META_FILE).read_text())
    files: dict[str, Path] = {
        f"anomaly/{META_FILE}": anomaly_run / META_FILE,
        f"anomaly/{det_meta['model_file']}": anomaly_run / det_meta["model_file"],
    }
    refine_meta = None
    if refine is not None:
        refine = Path(refine)
        load_refiner(refine)  # checks it
        refine_meta = json.loads((refine / REFINE_META).read_text())
        files[f"refine/{REFINE_META}"] = refine / REFINE_META
        files[f"refine/{refine_meta['model_file']}"] = refine / refine_meta["model_file"]
    cls_classes = None
    if classify_run is not None:
        ckpt = pick_checkpoint(classify_run, attempt)
        cls_classes = _classifier_classes(ckpt, anomaly_run)
        files["classifier/best.pt"] = ckpt
    classes = check_parts(out, det_meta, refine_meta, cls_classes)
    if out.exists() and not is_bundle(out):
        raise BadInputError(out, "exists and is not an inspection bundle; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for rel, src in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel)
        meta = {
            "format": FORMAT,
            "classes": classes,
            "rule": asdict(rule),
            "parts": {rel: sha256_file(tmp / rel) for rel in files},
            "sources": {
                "anomaly": str(anomaly_run.resolve()),
                "refine": str(Path(refine).resolve()) if refine else None,
                "classify": str(Path(classify_run).resolve()) if classify_run else None,
            },
        }
        write_json(tmp / BUNDLE_FILE, meta)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def region_probs(classifier: Any, image: Image.Image) -> RegionProbs:
    """``decide``'s ``[(box, mask), ...] -> [{type: p}, ...]`` for one image: a region-guided classifier
    (``Predictor.predict_regions``, one batch for all regions) on each region's box and mask, in the pixels
    of ``image`` (the maps' size)."""
    from torchvision.transforms import v2

    pixels = v2.functional.pil_to_tensor(image.convert("RGB"))

    def probs(regions: list[tuple[tuple[int, int, int, int], np.ndarray]]) -> list[dict[str, float]]:
        boxes, masks = [], []
        for (x0, y0, x1, y1), mask in regions:
            full = np.zeros((image.height, image.width), dtype=bool)
            full[y0:y1, x0:x1] = mask
            boxes.append((x0, y0, x1 - x0, y1 - y0))
            masks.append(full)
        return [p.probabilities for p in classifier.predict_regions(pixels, boxes, masks)]

    return probs


class Bundle:
    extra_columns = ("type", "probabilities", "regions")  # what inspect's CSV adds for a bundle

    def __init__(
        self,
        detector: Detector,
        refiner: Refiner | None,
        classifier: Any | None,
        classes: list[str],
        rule: VerdictRule,
        parts: dict[str, str],
        engine: str = "torch",
    ) -> None:
        self.detector, self.refiner, self.classifier = detector, refiner, classifier
        self.classes, self.rule, self.parts, self.engine = classes, rule, parts, engine

    @classmethod
    def load(cls, folder: str | Path, engine: str = "torch", device: str | None = None) -> Bundle:
        """``device``: where the detector runs (``inspect.engine.load_engine``); the classifier stays on the CPU."""
        folder = Path(folder)
        meta_path = folder / BUNDLE_FILE
        if not meta_path.is_file():
            raise BadInputError(
                folder,
                f"not an inspection bundle (no {BUNDLE_FILE}; build one with 'defectlab bundle build')",
            )
        try:
            meta = json.loads(meta_path.read_text())
            parts = dict(meta["parts"])
            rule = VerdictRule(**meta.get("rule", {}))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BadInputError(meta_path, f"unreadable bundle description ({type(exc).__name__})") from None
        if meta.get("format") != FORMAT:
            raise BadInputError(meta_path, f"unknown bundle format (expected {FORMAT})")
        for rel, digest in parts.items():
            path = folder / rel
            if not path.is_file():
                raise BadInputError(path, "bundle part missing")
            if sha256_file(path) != digest:
                raise BadInputError(
                    path,
                    "checksum mismatch: this bundle part was modified or truncated; "
                    "refusing to load it (rebuild the bundle)",
                )
        det_meta = json.loads((folder / "anomaly" / META_FILE).read_text())
        refine_meta = (
            json.loads((folder / "refine" / REFINE_META).read_text())
            if f"refine/{REFINE_META}" in parts
            else None
        )
        has_cls = "classifier/best.pt" in parts
        cls_classes = _classifier_classes(folder / "classifier" / "best.pt") if has_cls else None
        classes = check_parts(folder, det_meta, refine_meta, cls_classes)
        refiner = load_refiner(folder / "refine") if refine_meta is not None else None
        if engine == "onnx":
            if refiner is not None and refiner.shots > 0:
                raise ConfigError(
                    "the bundle's few-shot head needs the detector's features: use --engine torch"
                )
            from defectlab.inspect.onnx_engine import OnnxDetector

            detector: Any = OnnxDetector.load(folder / "anomaly", device=device or "cpu")
        elif engine == "torch":
            detector = Detector.load(folder / "anomaly", device=device)
        else:
            raise ConfigError(f"unknown engine '{engine}'; known: torch, onnx")
        classifier = None
        if has_cls:
            from defectlab.classify.predict import Predictor

            classifier = Predictor(folder / "classifier" / "best.pt", device="cpu").load()
        return cls(detector, refiner, classifier, classes, rule, parts, engine)

    # -- inference ------------------------------------------------------------------------------------
    def verdicts(
        self, images: Sequence[Image.Image | str | Path], *, batch_size: int = 8
    ) -> list[tuple[str, Image.Image, Verdict, np.ndarray]]:
        """Per image (name, decoded image, verdict, the map the regions come from at the image's size)."""
        det = self.detector
        thr = det.thresholds
        head = self.refiner if self.refiner is not None and self.refiner.shots > 0 else None
        out = []
        for start in range(0, len(images), batch_size):
            names, pils, tensors = det.prepare(images[start : start + batch_size], start)
            cls_probs: list[dict[str, float] | None] = [None] * len(pils)
            guided = self.classifier is not None and self.classifier.region_guided
            if self.classifier is not None and not guided:
                cls_probs = [p.probabilities for p in self.classifier.predict(pils)]
            for run in same_size_runs([tuple(t.shape) for t in tensors], batch_size):
                if head is not None:
                    emb, res = embed(det, torch.stack([tensors[k] for k in run]).to(det.device))
                    emb, res = emb.cpu(), AnomalyOutput(res.scores.cpu(), res.maps.cpu())  # the head: CPU
                    refined, types = head.refine(emb, res, thr.pixel)
                    scores, maps = res.scores.tolist(), list(res.maps.detach().cpu().numpy())
                else:
                    (scores, maps), refined, types = det.score_inputs([tensors[k] for k in run]), None, None
                for j, k in enumerate(run):
                    hw = (pils[k].height, pils[k].width)
                    amap = map_to_original(maps[j], hw, det.preprocess.resize)
                    rmap = (
                        map_to_original(refined[j], hw, det.preprocess.resize)
                        if refined is not None
                        else None
                    )
                    tmaps = (
                        np.stack([map_to_original(t, hw, det.preprocess.resize) for t in types[j]])
                        if types is not None
                        else None
                    )
                    v = decide(
                        anomaly_score=float(scores[j]),
                        anomaly_threshold=thr.image,
                        anomaly_map=amap,
                        pixel_threshold=thr.pixel,
                        refined_map=rmap,
                        refined_threshold=float(head.threshold_) if head is not None else None,
                        type_maps=tmaps,
                        classes=self.classes,
                        classifier_probs=cls_probs[k],
                        region_probs=region_probs(self.classifier, pils[k]) if guided else None,
                        rule=self.rule,
                    )
                    out.append((start + k, names[k], pils[k], v, rmap if rmap is not None else amap))
        out.sort(key=lambda r: r[0])
        return [r[1:] for r in out]

    def predict_images(
        self, images: Sequence[Image.Image | str | Path], *, batch_size: int = 8
    ) -> list[Prediction]:
        preds = []
        for name, _, v, amap in self.verdicts(images, batch_size=batch_size):
            s = v.scores
            pixel_thr = s.get("refined_threshold", s["pixel_threshold"])
            preds.append(
                Prediction(
                    name,
                    s["anomaly_score"],
                    s["anomaly_threshold"],
                    v.verdict == DEFECT,
                    amap,
                    [r.box for r in v.regions],
                    {"pixel_threshold": pixel_thr, "method": "bundle", **v.to_json()},
                )
            )
        return preds

    def info(self) -> dict[str, Any]:
        det = self.detector.info()
        return {
            **det,
            "bundle": {
                "format": FORMAT,
                "classes": self.classes,
                "rule": asdict(self.rule),
                "parts": self.parts,
                "engine": self.engine,
                "refine": self.refiner.describe() if self.refiner is not None else None,
                "classifier": self.classifier is not None,
            },
        }
