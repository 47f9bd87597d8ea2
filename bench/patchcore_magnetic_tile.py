"""PatchCore (or another method) on magnetic_tile through the library's own model API, one config per run.

    python bench/patchcore_magnetic_tile.py SIZE MODE '{"coreset_ratio": 0.01}'   # MODE: native|letterbox|squash|crop
    (the JSON holds the method's config keys, plus "model" and "standardize": RunConfig's defaults if absent)
    SUB=2 (every 2nd test image), THREADS=2, DATA=path/to/category, TAG=_suffix (output file name)
    SPLIT=tiles: re-split the good images by physical tile instead of using the folders' split (below)

magnetic_tile photographs every tile six times (exp1..exp6: six lighting setups, consecutive frame numbers in
the file names); the folders' good split (every 4th file by name) puts other shots of most good test tiles
into train, while every defective tile is unseen. SPLIT=tiles groups the shots of one tile (same class,
frame numbers within 200 of the previous shot) and puts every 4th good tile, all its shots, into test:
the same sizes (~707 train / ~245 good test), no tile on both sides.

Fits on all of train/good, evaluates every test image with the maps mapped back to the original size
(letterbox padding never counts), prints per-defect-type image/pixel AUROC and AUPRO, and writes
bench/results/patchcore_magnetic_tile_<SIZE>_<MODE>.json (with the load average at the end).
"""
import sys, time, os, json, numpy as np, torch
from pathlib import Path
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
from defectlab.data.index import open_dataset
from defectlab.data.transforms import as_hw
from defectlab.anomaly.detector import Preprocess
from defectlab.data.io import load_mask, read_info
from defectlab.anomaly import build_model
from defectlab.anomaly.runner import RunConfig, image_loader, native_scale
from defectlab.anomaly.geometry import map_to_original
from defectlab.metrics import anomaly_metrics
from magnetic_tile_split import test_tiles, tile_of

size = int(sys.argv[1]); mode = sys.argv[2]; opts = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
sub = int(os.environ.get("SUB", "1"))
idx = open_dataset(os.environ.get("DATA", str(Path(__file__).resolve().parents[2] / "shared/data/magnetic_tile")))
train = idx.select(split="train"); test = idx.select(split="test")[::sub]

if os.environ.get("SPLIT") == "tiles":
    tiles = tile_of((str(r.path), r.defect_type) for r in train + idx.select(split="test"))
    good = [r for r in train + idx.select(split="test") if r.label == 0]
    held = test_tiles(tiles, (r.path for r in good))
    sides = {}
    for r in good:
        sides.setdefault(tiles[str(r.path)], set()).add(r.split)
    print(f"{sum(len(v) > 1 for v in sides.values())} of {len(sides)} good tiles have shots in both folders", flush=True)
    train = [r for r in good if tiles[str(r.path)] not in held]
    test = ([r for r in idx.select(split="test") if r.label == 1] + [r for r in good if tiles[str(r.path)] in held])[::sub]
    print(f"tile split: {len(train)} train, {len(test)} test ({sum(r.label == 0 for r in test)} good)", flush=True)
std_int = opts.pop("standardize", RunConfig.standardize)
model = build_model(opts.pop("model", "patchcore"), opts)
# the detector's own preprocessing; "native": one scale factor, the median training image's longer side -> SIZE
scale = native_scale(train, size) if mode == "native" else 1.0
print(f"scale {scale:.3f}", flush=True)
pre = Preprocess(as_hw(size), mode, model.mean, model.std, scale=scale, standardize=std_int)
def loader(records):  # the library's own ("native": batches of consecutive images of one size)
    return image_loader(records, pre, RunConfig(batch_size=16))
t0 = time.time()
model.fit(loader(train))
fit_s = time.time() - t0
print("fit", fit_s, model.summary(), flush=True)
labels, scores, masks, maps, types = [], [], [], [], []
t0 = time.time(); t_pred = 0
for s in loader(test):
    t1 = time.time(); out = model.predict(s.image); t_pred += time.time() - t1
    for i, p in enumerate(s.path):
        info = read_info(p); hw = (info.height, info.width)
        rec = next(r for r in test if str(r.path) == p)
        m = load_mask(rec.mask_path, size=(info.width, info.height)) if rec.mask_path else np.zeros(hw, bool)
        masks.append(m); maps.append(map_to_original(out.maps[i], hw, mode))
        labels.append(int(s.label[i])); scores.append(float(out.scores[i])); types.append(s.defect_type[i])
res = anomaly_metrics(np.array(labels), np.array(scores), masks, maps)
for d in sorted(set(types) - {"good"}):
    sel = [i for i, t in enumerate(types) if t in (d, "good")]
    m = anomaly_metrics(np.array(labels)[sel], np.array(scores)[sel], [masks[i] for i in sel], [maps[i] for i in sel])
    print(d, round(m["image_auroc"], 3), round(m["pixel_auroc"], 3), round(float(m["pixel_aupro"]), 3),
          "background", round(m["background_auroc"], 3), flush=True)
res.update(split=os.environ.get("SPLIT", "folders"), standardize=std_int, summary=model.summary(), fit_s=fit_s, ms_per_img=1000 * t_pred / len(labels), size=size, mode=mode, opts=sys.argv[3:] , n=len(labels), load=os.getloadavg())
print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}), flush=True)
out = Path(__file__).resolve().parent / "results" / f"patchcore_magnetic_tile_{size}_{sys.argv[2]}{os.environ.get('TAG', '')}.json"
out.write_text(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}, indent=1) + "\n")
