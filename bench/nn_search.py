"""PatchCore's nearest-neighbour search at banks far beyond today's: torch vs FAISS, exact and approximate.

    $VENV/bin/python bench/nn_search.py                         # banks of 10k, 100k, 1M rows x 152
    $VENV/bin/python bench/nn_search.py --sizes 10000 100000 --images 5

For each bank size: one bank of feature-like rows (152 dimensions, the default PatchCore embedding width;
non-negative, around 64 centres each, the shape of pooled CNN activations) and ``--images`` query images of
``--patches`` rows each (1024: a 256 x 256 image at stride 8) drawn from the same distribution. Backends:
``torch`` (today's search), ``faiss`` (exact flat), ``faiss-ivf`` (nprobe 8 and 32) and ``faiss-hnsw``
(ef_search 64 and 128; skipped above ``--hnsw-max`` rows, its build is minutes there on 2 cores).
Per backend: build seconds (index construction, incl. k-means for IVF), milliseconds per image (median of
the images, timed side by side: every image runs through every backend before the next image), the largest
distance difference to torch's, and recall@1 against the exact search (share of query patches whose returned
row is a true nearest one). Writes ``bench/results/nn_search.json`` (with the load average: the machine is
a shared 2-core one; compare backends within one run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from defectlab.anomaly.search import FaissIndex, SearchConfig, recall_at_1, torch_nearest

RESULTS = Path(__file__).resolve().parent / "results"


def feature_rows(n: int, d: int, centres: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(centres, d, generator=torch.Generator().manual_seed(1234)) * 3  # same for bank, queries
    out = torch.empty(n, d)
    for i in range(0, n, 100_000):  # in blocks: bounded temporary memory at 1M rows
        m = min(100_000, n - i)
        noise = 0.4 * torch.randn(m, d, generator=g)
        out[i:i + m] = (c[torch.randint(centres, (m,), generator=g)] + noise).relu_()
    return out


def configs(n: int, hnsw_max: int) -> list[SearchConfig]:
    out = [SearchConfig("faiss"), SearchConfig("faiss-ivf", nprobe=8), SearchConfig("faiss-ivf", nprobe=32)]
    if n <= hnsw_max:
        out += [SearchConfig("faiss-hnsw", ef_search=64), SearchConfig("faiss-hnsw", ef_search=128)]
    return out


def label(c: SearchConfig) -> str:
    return {"faiss": "faiss-flat", "faiss-ivf": f"faiss-ivf nprobe={c.nprobe}",
            "faiss-hnsw": f"faiss-hnsw ef={c.ef_search}"}[c.backend]


def bench_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    bank = feature_rows(n, args.dim, args.centres, seed=n)
    sq = (bank * bank).sum(1)
    images = [feature_rows(args.patches, args.dim, args.centres, seed=10_000_000 + i)
              for i in range(args.images)]
    cfgs = configs(n, args.hnsw_max)
    built: dict[str, tuple[FaissIndex, float]] = {}  # one index per kind; nprobe / efSearch set per search
    rows: dict[str, dict[str, Any]] = {"torch": {"build_s": 0.0, "ms": [], "dist": []}}
    for c in cfgs:
        if c.backend not in built:
            t0 = time.perf_counter()
            built[c.backend] = (FaissIndex(bank, c), time.perf_counter() - t0)
            print(f"  {n:>8} rows: built {c.backend} in {built[c.backend][1]:.1f} s", flush=True)
        rows[label(c)] = {"build_s": round(built[c.backend][1], 2), "ms": [], "dist": []}

    def tune(c: SearchConfig) -> FaissIndex:
        index = built[c.backend][0]
        if c.backend == "faiss-ivf":
            index.index.nprobe = c.nprobe
        elif c.backend == "faiss-hnsw":
            index.index.hnsw.efSearch = c.ef_search
        return index

    for q in images:
        t0 = time.perf_counter()
        d, _ = torch_nearest(q, bank, sq)
        rows["torch"]["ms"].append((time.perf_counter() - t0) * 1000)
        rows["torch"]["dist"].append(d)
        for c in cfgs:
            index = tune(c)
            t0 = time.perf_counter()
            d, _ = index.search(q)
            rows[label(c)]["ms"].append((time.perf_counter() - t0) * 1000)
            rows[label(c)]["dist"].append(d)
    exact = torch.cat(rows["torch"]["dist"])
    out: dict[str, Any] = {"bank_rows": n, "bank_mb": round(bank.numel() * 4 / 2**20, 1), "backends": {}}
    base = statistics.median(rows["torch"]["ms"])
    for name, r in rows.items():
        dist = torch.cat(r["dist"])
        ms = statistics.median(r["ms"])
        out["backends"][name] = {
            "build_s": r["build_s"], "ms_per_image": round(ms, 2), "speedup_vs_torch": round(base / ms, 2),
            "recall_at_1": round(recall_at_1(dist, exact), 4),
            "max_abs_dist_diff_vs_torch": float((dist - exact).abs().max()),
        }
        print(f"  {n:>8} rows: {name:<22} {ms:9.1f} ms/image  x{base / ms:5.2f}  "
              f"recall@1 {out['backends'][name]['recall_at_1']:.4f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=152)
    ap.add_argument("--centres", type=int, default=64)
    ap.add_argument("--patches", type=int, default=1024, help="query rows per image")
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--hnsw-max", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "nn_search.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    t0 = time.time()
    results = []
    for n in args.sizes:
        results.append(bench_size(n, args))
    doc = {
        "what": "PatchCore nearest-neighbour search per image, torch vs FAISS",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "data": "synthetic feature-like rows (non-negative, around --centres centres); queries from the same "
                "distribution",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other "
                   f"work; torch {torch.__version__}, {args.threads} threads",
        "load_avg_start": [round(x, 2) for x in load0],
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.time() - t0, 1),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
