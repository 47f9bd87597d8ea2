"""Export: masks -> instances (RLE exact, polygons IoU >= 0.95, boxes = extents), COCO / YOLO / VOC / SAM
files valid and consistent, VOC import round trip, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy import ndimage

from defectlab.cli import main
from defectlab.data.index import open_dataset
from defectlab.errors import BadInputError
from defectlab.export import (ExportOptions, collect, export_coco, export_sam, export_voc, export_yolo,
                              import_voc, read_yolo)
from defectlab.export.instances import (components, mask_box, mask_instances, mask_to_polygons, mask_to_rle,
                                        polygons_to_mask, rle_to_mask)
from defectlab.export.sam import interior_point
from defectlab.export.voc import parse_voc
from tests.conftest import shared_dataset

H = W = 96


def _shapes() -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:H, :W]
    r2 = (yy - 48) ** 2 + (xx - 44) ** 2
    rng = np.random.default_rng(3)
    blob = ndimage.binary_opening(ndimage.gaussian_filter(rng.random((H, W)), 3) > 0.52)
    return {
        "disc": (yy - 40) ** 2 + (xx - 50) ** 2 < 21**2,
        "rect": (yy >= 7) & (yy < 30) & (xx >= 11) & (xx < 80),
        "ring": (r2 < 30**2) & (r2 >= 17**2),
        "ring_thin": (r2 < 20**2) & (r2 >= 18**2),
        "diag_line": np.eye(H, dtype=bool) | np.eye(H, k=1, dtype=bool),
        "thin_line": np.eye(H, dtype=bool),  # 1 px, 8-connected only
        "hline": (yy == 50) & (xx > 5) & (xx < 90),
        "several": ((yy - 20) ** 2 + (xx - 20) ** 2 < 64) | ((yy > 60) & (yy < 70) & (xx > 50)),
        "blobs": blob,
    }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("name", list(_shapes()))
def test_rle_round_trip_is_exact(name: str) -> None:
    mask = _shapes()[name]
    assert np.array_equal(rle_to_mask(json.loads(json.dumps(mask_to_rle(mask)))), mask)


@pytest.mark.parametrize("name", list(_shapes()))
@pytest.mark.parametrize("tolerance", [0.0, 0.5])
def test_polygons_round_trip(name: str, tolerance: float) -> None:
    mask = _shapes()[name]
    back = np.zeros_like(mask)
    for inst in mask_instances(mask, "d", tolerance=tolerance):
        assert len(inst.polygons) == 1  # one polygon per 8-connected instance, holes bridged in
        back |= polygons_to_mask(inst.polygons, H, W)
    assert _iou(back, mask) >= 0.95
    if tolerance == 0.0:  # pixel-edge outlines rasterise back exactly with pycocotools
        assert np.array_equal(back, mask)


def test_polygon_keeps_hole_of_ring() -> None:
    ring = _shapes()["ring"]
    (poly,) = mask_to_polygons(ring)
    back = polygons_to_mask([poly], H, W)
    assert not back[48, 44] and back[48, 44 + 24]


def test_simplification_reduces_vertices_and_stays_close() -> None:
    disc = _shapes()["disc"]
    exact, coarse = mask_to_polygons(disc, 0.0)[0], mask_to_polygons(disc, 1.0)[0]
    assert len(coarse) < len(exact) / 2
    assert _iou(polygons_to_mask([coarse], H, W), disc) >= 0.95


def test_components_are_8_connected_with_exact_boxes() -> None:
    m = np.zeros((20, 20), bool)
    m[2, 2] = m[3, 3] = m[4, 4] = True  # diagonal chain: one instance
    m[10:13, 5:9] = True
    m[18, 18] = True
    comps = components(m)
    assert len(comps) == 3
    assert len(components(m, min_area=2)) == 2
    boxes = sorted(mask_box(c) for c in comps)
    assert boxes == [(2, 2, 3, 3), (5, 10, 4, 3), (18, 18, 1, 1)]
    for inst in mask_instances(m, "d"):
        xs, ys = inst.polygons[0][0::2], inst.polygons[0][1::2]
        x, y, w, h = inst.bbox
        assert (min(xs), min(ys), max(xs), max(ys)) == (x, y, x + w, y + h)  # polygon extent = box
        assert inst.area == int(inst.mask.sum())


@pytest.fixture(scope="module")
def items(synthetic_object: Path):
    return collect(synthetic_object, ExportOptions(min_area=1))


def test_boxes_match_component_extents(items) -> None:
    its, _ = items
    checked = 0
    for it in its:
        for inst in it.instances:
            rows, cols = np.nonzero(inst.mask)
            w, h = cols.max() - cols.min() + 1, rows.max() - rows.min() + 1
            assert inst.bbox == (cols.min(), rows.min(), w, h)
            checked += 1
    assert checked >= 20


def test_coco_loads_and_self_evaluation_gives_ap_1(items, tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    its, cats = items
    export_coco(its, cats, tmp_path, images="symlink")
    for suffix in ("", "_rle"):
        path = tmp_path / "annotations" / f"instances_test{suffix}.json"
        gt = COCO(str(path))
        assert len(gt.getCatIds()) == len(cats)
        assert len(gt.getImgIds()) == sum(it.split == "test" for it in its)
        dets = [dict(a, score=1.0) for a in gt.dataset["annotations"]]
        for a in dets:
            a.pop("id")
        dt = gt.loadRes(dets)
        for iou_type in ("bbox", "segm"):
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            assert ev.stats[0] == pytest.approx(1.0), (suffix, iou_type)  # AP@[.5:.95]
        # polygon and RLE files describe the same pixels
        for ann in gt.dataset["annotations"][:10]:
            assert gt.annToMask(ann).sum() == ann["area"]
    assert (tmp_path / "images" / "test").is_dir()


def test_yolo_labels_normalised_and_consistent(items, tmp_path: Path) -> None:
    its, cats = items
    for task in ("detect", "segment"):
        out = tmp_path / task
        export_yolo(its, cats, out, images="symlink", task=task)
        data = yaml.safe_load((out / "data.yaml").read_text())
        assert data["names"] == cats and (out / data["train"]).is_dir() and (out / data["val"]).is_dir()
        n_lines = 0
        for it in its:
            lines = (out / "labels" / it.split / (Path(it.name).stem + ".txt")).read_text().splitlines()
            assert len(lines) == len(it.instances)
            for line, inst in zip(lines, it.instances):
                vals = np.array(line.split()[1:], dtype=float)
                assert cats[int(line.split()[0])] == inst.category
                assert ((vals >= 0) & (vals <= 1)).all()
                if task == "segment":
                    assert len(vals) % 2 == 0 and len(vals) >= 6
                    mask = polygons_to_mask([list(vals * np.tile([it.width, it.height], len(vals) // 2))],
                                            it.height, it.width)
                    assert _iou(mask, inst.mask) >= 0.95
                n_lines += 1
        assert n_lines >= 20


def test_voc_and_sam_exports(items, tmp_path: Path) -> None:
    its, cats = items
    export_voc(its, cats, tmp_path / "voc", images="none")
    export_sam(its, cats, tmp_path / "sam", images="none")
    by_stem = {Path(it.name).stem: it for it in its}
    xmls = sorted((tmp_path / "voc" / "Annotations").glob("*.xml"))
    assert len(xmls) == len(its)  # one file per image, good images included
    n_boxes = 0
    for xml in xmls:
        it = by_stem[xml.stem]
        _, w, h, inst = parse_voc(xml, it.path.parent)
        assert [i.bbox for i in inst] == [i.bbox for i in it.instances] and (w, h) == (it.width, it.height)
        n_boxes += len(inst)
    assert n_boxes == sum(len(it.instances) for it in its) >= 20
    sam = json.loads((tmp_path / "sam" / "sam.json").read_text())
    n = 0
    assert len(sam["images"]) == len(its)
    for entry, it in zip(sam["images"], its, strict=True):
        assert len(entry["instances"]) == len(it.instances)
        for inst, src in zip(entry["instances"], it.instances, strict=True):
            mask = np.asarray(Image.open(tmp_path / "sam" / inst["mask"])) > 0
            assert np.array_equal(mask, src.mask)
            x, y = inst["point"]
            assert mask[y, x]
            assert inst["box_xyxy"] == list(src.xyxy)
            n += 1
    assert n == sum(len(it.instances) for it in its)


def test_interior_point_of_ring_is_on_the_ring() -> None:
    ring = _shapes()["ring"]
    x, y = interior_point(ring)
    assert ring[y, x]


def _write_voc(folder: Path, images: Path, n: int = 6) -> dict[str, list[tuple]]:
    folder.mkdir(parents=True)
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    truth = {}
    for i in range(n):
        w, h = 120 + 10 * i, 90
        Image.fromarray(np.zeros((h, w), np.uint8)).save(images / f"img_{i}.jpg")
        objs, boxes = [], []
        for k in range(1 + i % 3):
            x0, y0 = int(rng.integers(1, w // 2)), int(rng.integers(1, h // 2))
            x1, y1 = int(rng.integers(x0, w + 1)), int(rng.integers(y0, h + 1))
            name = ["dent", "scratch"][k % 2]
            objs.append(f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
            boxes.append((name, x0, y0, x1, y1))
        fname = f"img_{i}.jpg" if i % 2 else f"img_{i}"  # NEU-DET sometimes drops the extension
        (folder / f"img_{i}.xml").write_text(
            f"<annotation><filename>{fname}</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>1</depth></size>{''.join(objs)}</annotation>")
        truth[f"img_{i}"] = sorted(boxes)
    return truth


def test_voc_import_to_yolo_and_back(tmp_path: Path) -> None:
    truth = _write_voc(tmp_path / "ann", tmp_path / "img")
    items, cats = import_voc(tmp_path / "ann", tmp_path / "img")
    assert cats == ["dent", "scratch"]
    export_yolo(items, cats, tmp_path / "yolo", images="copy", task="detect")
    back, cats2 = read_yolo(tmp_path / "yolo" / "data.yaml", "train")
    assert cats2 == cats
    export_voc(back, cats, tmp_path / "voc", images="none")
    for stem, boxes in truth.items():
        _, _, _, inst = parse_voc(tmp_path / "voc" / "Annotations" / f"{stem}.xml", tmp_path / "img")
        again = sorted((i.category, i.xyxy[0] + 1, i.xyxy[1] + 1, i.xyxy[2], i.xyxy[3]) for i in inst)
        assert again == boxes
    # COCO from boxes only: loads, boxes identical
    from pycocotools.coco import COCO

    export_coco(items, cats, tmp_path / "coco", images="none", segm="none")
    gt = COCO(str(tmp_path / "coco" / "annotations" / "instances_train.json"))
    assert len(gt.dataset["annotations"]) == sum(len(b) for b in truth.values())


def test_voc_import_val_split_is_seeded(tmp_path: Path) -> None:
    _write_voc(tmp_path / "ann", tmp_path / "img", n=10)
    a, _ = import_voc(tmp_path / "ann", tmp_path / "img", val_fraction=0.3, seed=1)
    b, _ = import_voc(tmp_path / "ann", tmp_path / "img", val_fraction=0.3, seed=1)
    assert [i.split for i in a] == [i.split for i in b] and {i.split for i in a} == {"train", "val"}


def test_bad_inputs_are_one_line_errors_naming_the_file(tmp_path: Path, synthetic_object: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    ann, img = tmp_path / "ann", tmp_path / "img"
    _write_voc(ann, img, n=2)
    (ann / "broken.xml").write_text("<annotation><filename>img_0.jpg</filename><object>")
    with pytest.raises(BadInputError, match="broken.xml: malformed XML"):
        import_voc(ann, img)
    rc = main(["export", "import-voc", str(ann), str(img), str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "broken.xml" in err and len(err.splitlines()) == 1
    # a mask whose size differs from its image
    idx = open_dataset(synthetic_object)
    rec = next(r for r in idx.records if r.mask_path is not None)
    bad = tmp_path / "bad_mask.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(bad)
    idx.records = [type(rec)(rec.path, rec.split, rec.defect_type, bad)]
    with pytest.raises(BadInputError, match="bad_mask.png: mask is 12x10"):
        collect(idx)


def test_cli_exports(synthetic_object: Path, tmp_path: Path) -> None:
    its, _ = collect(synthetic_object, ExportOptions(min_area=1))
    n_images, n_instances = len(its), sum(len(it.instances) for it in its)
    assert n_instances >= 20
    for args in (["coco", "--segm", "rle"], ["yolo", "--task", "segment", "--images", "symlink"], ["voc"],
                 ["sam", "--no-good", "--min-area", "5"]):
        out = tmp_path / args[0]
        assert main(["export", args[0], str(synthetic_object), str(out), *args[1:]]) == 0
        assert json.loads((out / "export.json").read_text())["categories"]
    coco = [json.loads(f.read_text()) for f in sorted((tmp_path / "coco" / "annotations").glob("*.json"))]
    assert sum(len(c["images"]) for c in coco) == n_images
    assert sum(len(c["annotations"]) for c in coco) == n_instances
    labels = list((tmp_path / "yolo").rglob("labels/**/*.txt"))
    assert sum(len(f.read_text().splitlines()) for f in labels) == n_instances
    assert len(list((tmp_path / "voc" / "Annotations").glob("*.xml"))) == n_images
    assert main(["export", "yolo", str(synthetic_object), str(tmp_path / "x"), "--images", "none"]) == 2
    sam = json.loads((tmp_path / "sam" / "sam.json").read_text())
    assert sam["images"] and all(e["instances"] for e in sam["images"])  # --no-good: defect images only


def test_neu_det_annotations_import(tmp_path: Path) -> None:
    root = shared_dataset("neu_det")
    items, cats = import_voc(root / "Validation_Annotations", root / "Validation_Images")
    assert len(items) == 30 and set(cats) <= {"crazing", "inclusion", "patches", "pitted_surface",
                                              "rolled-in_scale", "scratches"}
    assert all(it.instances for it in items)
    for it in items:
        for inst in it.instances:
            x0, y0, x1, y1 = inst.xyxy
            assert 0 <= x0 < x1 <= it.width and 0 <= y0 < y1 <= it.height
    summary = export_yolo(items, cats, tmp_path, images="symlink", task="detect")
    assert summary["splits"]["train"]["instances"] == sum(len(it.instances) for it in items)


def test_manifest_splits_reach_yolo(synthetic_object: Path, tmp_path: Path) -> None:
    from defectlab.data.split import SplitConfig, make_split, write_manifest

    cfg = SplitConfig(val=0.25, test=0.25, seed=0)
    manifest = tmp_path / "split.csv"
    write_manifest(make_split(open_dataset(synthetic_object), cfg), manifest, cfg)
    assert main(["export", "yolo", str(synthetic_object), str(tmp_path / "y"), "--manifest", str(manifest),
                 "--images", "symlink"]) == 0
    data = yaml.safe_load((tmp_path / "y" / "data.yaml").read_text())
    assert data["val"] == "images/val" and data["test"] == "images/test"
    n = {s: len(list((tmp_path / "y" / "labels" / s).glob("*.txt"))) for s in ("train", "val", "test")}
    assert all(v > 0 for v in n.values())
