"""Nearest-neighbour search over a PatchCore memory bank, from a few thousand rows to millions.

Every backend answers the same question as PatchCore's original search: for each query row, the index
of its nearest bank row and the Euclidean distance to it. The distance is always recomputed exactly
from the chosen row (``||q - bank[i]||``), so backends differ only in which row they pick:

- ``torch``: the original: ``argmin(||b||^2 - 2 q.b)`` in bounded-memory chunks (one matmul per chunk),
  on the bank's device (CPU or GPU). Bit-for-bit what PatchCore computed before this module existed.
- ``faiss``: exact flat L2 search (``IndexFlatL2``; on a GPU when the FAISS build has one and the bank is
  on CUDA, else on the CPU). Same neighbours as ``torch`` up to exact ties; distances equal to 1e-5.
- ``faiss-ivf``: approximate, inverted lists (``IndexIVFFlat``: ``nlist`` k-means cells, ``nprobe`` of
  them searched per query). ``faiss-hnsw``: approximate, a navigable small-world graph (``IndexHNSWFlat``:
  ``hnsw_m`` links per node, ``ef_search`` candidates per query). Both trade recall@1 (see
  :func:`recall_at_1` and ``bench/nn_search.py``) for speed on large banks.
- ``auto``: ``torch`` for a bank on a GPU or a small bank, ``faiss`` for a large bank on the CPU (where
  flat FAISS measured faster, bench/results/nn_search.json), ``torch`` when FAISS is not installed.

Indexes are built once per bank and cached (keyed by the bank tensor's identity and version), so
``nearest(queries, bank, bank_sq, backend=...)`` can be called per image batch at no rebuild cost.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from defectlab.errors import ConfigError

log = logging.getLogger(__name__)
BACKENDS = ("torch", "faiss", "faiss-ivf", "faiss-hnsw", "auto")
AUTO_FAISS_MIN_ROWS = 200_000  # auto: flat FAISS from here on the CPU (1.3x at 1M rows, 1.07x at 100k)


@dataclass(frozen=True)
class SearchConfig:
    backend: str = "torch"  # one of BACKENDS
    nlist: int | None = None  # faiss-ivf: k-means cells (None: about sqrt(bank rows))
    nprobe: int = 8  # faiss-ivf: cells searched per query
    hnsw_m: int = 32  # faiss-hnsw: links per node
    ef_construction: int = 64  # faiss-hnsw: candidates while building
    ef_search: int = 64  # faiss-hnsw: candidates per query
    seed: int = 0  # faiss-ivf: training sample and k-means seed

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"search backend '{self.backend}' unknown; known: {', '.join(BACKENDS)}")
        if self.nprobe < 1 or self.hnsw_m < 2 or self.ef_search < 1 or self.ef_construction < 1:
            raise ConfigError("search: nprobe and ef_search must be >= 1, hnsw_m >= 2")
        if self.nlist is not None and self.nlist < 1:
            raise ConfigError(f"search: nlist must be >= 1, got {self.nlist}")


def torch_nearest(queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor,
                  max_elems: int = 1 << 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance and index of each query row's nearest bank row, in bounded-memory chunks."""
    step = max(1, max_elems // max(1, bank.shape[0]))
    idx = []
    for q in queries.split(step):  # ||q||^2 is the same for every bank row: leave it out of the argmin
        idx.append(torch.addmm(bank_sq, q, bank.T, alpha=-2.0).argmin(dim=1))
    index = torch.cat(idx)
    # exact distances to the chosen rows (the expanded form loses precision when norms are large)
    return torch.linalg.vector_norm(queries - bank[index], dim=1), index


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise ConfigError("the FAISS search backends need faiss: pip install faiss-cpu") from None
    return faiss


def faiss_gpus() -> int:
    """GPUs the installed FAISS build can use (0 for faiss-cpu or without FAISS)."""
    if not faiss_available():
        return 0
    faiss = _faiss()
    return int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0


def resolve_backend(backend: str, bank: torch.Tensor) -> str:
    if backend != "auto":
        return backend
    if bank.device.type != "cpu" or bank.shape[0] < AUTO_FAISS_MIN_ROWS or not faiss_available():
        return "torch"
    return "faiss"


class FaissIndex:
    """A FAISS index over ``bank`` (on the CPU, or on a GPU with GPU FAISS); ``search`` as ``nearest``."""

    def __init__(self, bank: torch.Tensor, config: SearchConfig) -> None:
        faiss = _faiss()
        self.config = config
        self.bank = bank  # exact distances are recomputed from the bank on its own device
        x = np.ascontiguousarray(bank.detach().float().cpu().numpy())
        n, d = x.shape
        c = config
        if c.backend == "faiss":
            index = faiss.IndexFlatL2(d)
        elif c.backend == "faiss-ivf":
            nlist = c.nlist or max(1, int(np.sqrt(n)))
            nlist = max(1, min(nlist, n // 39 or 1))  # k-means wants >= 39 training points per cell
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
            rng = np.random.default_rng(c.seed)
            sample = x if n <= 64 * nlist else x[np.sort(rng.choice(n, 64 * nlist, replace=False))]  # k-means
            index.cp.seed = c.seed
            index.train(sample)
            index.nprobe = min(c.nprobe, nlist)
        elif c.backend == "faiss-hnsw":
            index = faiss.IndexHNSWFlat(d, c.hnsw_m)
            index.hnsw.efConstruction = c.ef_construction
            index.hnsw.efSearch = c.ef_search
        else:
            raise ConfigError(f"not a FAISS backend: '{c.backend}'")
        self.on_gpu = bank.device.type == "cuda" and faiss_gpus() > 0 and c.backend != "faiss-hnsw"
        if self.on_gpu:  # HNSW has no GPU version; flat and IVF move over
            self._res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._res, bank.device.index or 0, index)
        index.add(x)
        self.index = index

    def search(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        faiss = _faiss()
        faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
        q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        _, found = self.index.search(q, 1)
        idx = torch.from_numpy(found[:, 0].astype(np.int64))
        missing = idx < 0  # an approximate index may find nothing (e.g. all probed IVF cells empty)
        if bool(missing.any()):
            bank = self.bank.to(queries.device)
            sq = (bank * bank).sum(1)
            idx[missing] = torch_nearest(queries[missing.to(queries.device)], bank, sq)[1].cpu()
        idx = idx.to(self.bank.device)
        bank = self.bank
        qd = queries.to(bank.device)
        return torch.linalg.vector_norm(qd - bank[idx], dim=1).to(queries.device), idx.to(queries.device)


_CACHE: dict[tuple[int, SearchConfig], tuple[weakref.ref, int, FaissIndex]] = {}
_CACHE_SIZE = 4


def bank_index(bank: torch.Tensor, config: SearchConfig) -> FaissIndex:
    """The FAISS index of ``bank`` under ``config``, built once and reused while the bank is unchanged."""
    key = (id(bank), config)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is bank and hit[1] == bank._version:
        return hit[2]
    index = FaissIndex(bank, config)
    for k in [k for k, v in _CACHE.items() if v[0]() is None]:
        del _CACHE[k]
    while len(_CACHE) >= _CACHE_SIZE:
        del _CACHE[next(iter(_CACHE))]
    _CACHE[key] = (weakref.ref(bank), bank._version, index)
    return index


def nearest(queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor | None = None,
            max_elems: int = 1 << 24, *,
            backend: str | SearchConfig = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to and index of each query row's nearest bank row (see the module docstring).

    ``backend``: a name from ``BACKENDS`` or a full ``SearchConfig``. ``bank_sq`` (the bank's squared row
    norms) is only used by ``torch``; it is computed when not given.
    """
    config = backend if isinstance(backend, SearchConfig) else SearchConfig(backend=backend)
    name = resolve_backend(config.backend, bank)
    if name == "torch":
        if bank_sq is None:
            bank_sq = (bank * bank).sum(1)
        return torch_nearest(queries, bank, bank_sq, max_elems)
    if name != config.backend:
        config = replace(config, backend=name)
    return bank_index(bank, config).search(queries)


def recall_at_1(found: torch.Tensor, exact: torch.Tensor, *, rtol: float = 1e-5, atol: float = 1e-6) -> float:
    """Share of queries whose found neighbour is a true nearest one: its distance ``found`` equals the
    exact nearest distance ``exact`` (ties with the exact search's pick count as hits)."""
    if found.shape != exact.shape:
        raise ValueError(f"recall_at_1: shapes differ, {tuple(found.shape)} vs {tuple(exact.shape)}")
    if found.numel() == 0:
        return 1.0
    hit = found.double() <= exact.double() * (1 + rtol) + atol
    return float(hit.double().mean())


__all__ = ["AUTO_FAISS_MIN_ROWS", "BACKENDS", "FaissIndex", "SearchConfig", "bank_index", "faiss_available",
           "faiss_gpus", "nearest", "recall_at_1", "resolve_backend", "torch_nearest"]
