"""Nearest-neighbour search backends: torch is PatchCore's search bit for bit; exact FAISS gives the same
distances to 1e-5; approximate FAISS indexes find the true nearest row for most queries."""

from __future__ import annotations

import pytest
import torch

from defectlab.anomaly import build_model
from defectlab.anomaly.patchcore import PatchCoreConfig
from defectlab.anomaly.search import (
    SearchConfig,
    bank_index,
    faiss_available,
    nearest,
    recall_at_1,
    resolve_backend,
    torch_nearest,
)
from defectlab.errors import ConfigError

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss not installed")


def clustered(n: int, d: int = 152, centres: int = 40, seed: int = 0) -> torch.Tensor:
    """Rows around a few centres with positive, feature-like magnitudes (like pooled CNN activations)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(centres, d, generator=g) * 3
    return (c[torch.randint(centres, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)).relu()


@pytest.fixture(scope="module")
def data(one_torch_thread) -> tuple[torch.Tensor, torch.Tensor]:
    bank = clustered(4000, seed=0)
    queries = torch.cat([clustered(1000, seed=1), bank[:24]])  # 24 queries equal to bank rows: distance 0
    return bank, queries


def test_torch_backend_is_patchcores_default_search_bit_for_bit(data) -> None:
    bank, queries = data
    sq = (bank * bank).sum(1)
    d0, i0 = torch_nearest(queries, bank, sq)
    d1, i1 = nearest(queries, bank, sq, backend=PatchCoreConfig().search)  # auto: torch below 200k rows
    assert torch.equal(d0, d1) and torch.equal(i0, i1)
    d2, i2 = nearest(queries, bank, sq, max_elems=4000 * 7, backend="torch")  # other chunking, same answer
    assert torch.equal(d0, d2) and torch.equal(i0, i2)


@needs_faiss
def test_faiss_exact_equals_todays_distances(data) -> None:
    bank, queries = data
    d0, i0 = torch_nearest(queries, bank, (bank * bank).sum(1))
    d1, i1 = nearest(queries, bank, backend="faiss")
    assert torch.allclose(d1, d0, rtol=0, atol=1e-5), float((d1 - d0).abs().max())
    assert (i1 == i0).float().mean() > 0.99  # the rest are (near-)ties
    assert d1[-24:].abs().max() < 1e-5  # a bank row finds itself
    assert d1.dtype == d0.dtype and i1.dtype == i0.dtype and i1.device == i0.device


@needs_faiss
@pytest.mark.parametrize("config", [SearchConfig("faiss-ivf", nprobe=8),
                                    SearchConfig("faiss-hnsw", ef_search=128)], ids=["ivf", "hnsw"])
def test_approximate_backends_recall(data, config: SearchConfig) -> None:
    bank, queries = data
    exact, _ = nearest(queries, bank, backend="torch")
    found, idx = nearest(queries, bank, backend=config)
    assert torch.allclose(found, torch.linalg.vector_norm(queries - bank[idx], dim=1))  # exact to its pick
    assert bool((found >= exact - 1e-5).all())  # never closer than the true nearest
    rec = recall_at_1(found, exact)
    print(f"{config.backend}: recall@1 {rec:.3f}")
    assert rec >= 0.9
    assert recall_at_1(exact, exact) == 1.0


def test_recall_helper_counts_ties_and_misses() -> None:
    exact = torch.tensor([1.0, 2.0, 0.0, 3.0])
    assert recall_at_1(torch.tensor([1.0, 2.5, 0.0, 3.0]), exact) == 0.75
    with pytest.raises(ValueError, match="shapes differ"):
        recall_at_1(exact[:2], exact)


@needs_faiss
def test_index_is_cached_until_the_bank_changes(data) -> None:
    bank = data[0].clone()
    cfg = SearchConfig("faiss")
    first = bank_index(bank, cfg)
    assert bank_index(bank, cfg) is first
    bank[0] += 1.0  # in place: the tensor's version moves, the index is rebuilt
    assert bank_index(bank, cfg) is not first


def test_backend_names_and_auto() -> None:
    with pytest.raises(ConfigError, match="unknown; known: torch, faiss"):
        SearchConfig("annoy")
    with pytest.raises(ConfigError, match="unknown"):
        nearest(torch.zeros(2, 3), torch.zeros(4, 3), backend="flat")
    assert resolve_backend("auto", torch.zeros(10, 3)) == "torch"
    big = torch.zeros(250_000, 2)
    assert resolve_backend("auto", big) == ("faiss" if faiss_available() else "torch")


@needs_faiss
def test_patchcore_scores_unchanged_with_faiss(one_torch_thread) -> None:
    """PatchCore with exact FAISS search (config ``search: faiss``) scores as with its default search."""
    g = torch.Generator().manual_seed(0)
    train = torch.rand(6, 3, 64, 64, generator=g)
    test = torch.cat([train[:1], torch.rand(3, 3, 64, 64, generator=g)])
    model = build_model("patchcore", {"coreset_ratio": 0.5, "weights": "none"})
    model.fit([train[:3], train[3:]])
    before = model.predict(test)
    model.config.search = "faiss"
    after = model.predict(test)
    assert torch.allclose(after.scores, before.scores, rtol=1e-5, atol=1e-5)
    assert torch.allclose(after.maps, before.maps, rtol=1e-5, atol=1e-5)
