"""Greedy k-center coreset (PatchCore's memory-bank subsampling), with bounded memory and time.

Greedy k-center picks, one at a time, the point farthest from those already picked, so the coreset
covers rare patches that random subsampling would drop. Distances are taken after a fixed Gaussian
random projection to ``proj_dim`` dimensions (Johnson-Lindenstrauss; the paper uses 128).

Exact greedy costs ``k * N * d`` and holds all N features: at 700 images x 1500 patches that is tens of
minutes on a CPU. ``StreamingCoreset`` runs it exactly while all patches seen are at most ``final_rows``
(65,536 rows of 128 projected dimensions: about a second, e.g. 64 images at 256 px), and beyond that in
two stages: features arrive a few images at a time;
each full chunk of ``chunk_size`` patches is reduced by greedy selection to a fraction
``f = max(ratio, min(oversample * ratio, 0.05))`` of itself (oversampling only while it stays cheap);
the survivors then go through a final greedy pass to the target ``k = ratio * N`` (exact when they are at
most ``final_rows``, else chunked again). Memory is at most ``final_rows`` rows, then one chunk plus the
survivors; time is about ``f * N * chunk_size * d``, linear in N.
"""

from __future__ import annotations

import math

import torch


def greedy_kcenter(x: torch.Tensor, k: int, *, start: int = 0, desc: str | None = None) -> torch.Tensor:
    """Indices of ``k`` points of ``x`` (N, d) chosen by greedy farthest-point selection from ``start``.

    ``desc``: show a tqdm progress bar with this title. Runs on one CPU thread: each step is a small,
    memory-bound matrix-vector product, and thousands of thread hand-offs cost more than they gain
    (badly so on a loaded machine). Runs on ``x``'s device (a GPU too); the indices come back on the CPU.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _greedy(x, k, start, desc)
    finally:
        torch.set_num_threads(threads)


def _greedy(x: torch.Tensor, k: int, start: int, desc: str | None) -> torch.Tensor:
    n = x.shape[0]
    k = min(k, n)
    if k <= 0:
        return torch.empty(0, dtype=torch.long)
    norms = (x * x).sum(1)
    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = start
    min_d = torch.addmv(norms, x, x[start], alpha=-2.0).add_(norms[start])
    d = torch.empty_like(min_d)
    bar = None
    if desc is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=k, desc=desc, unit="pt", leave=False, disable=None, mininterval=0.5)
    for i in range(1, k):
        if bar is not None and i % 256 == 0:
            bar.update(256)
        j = int(torch.argmax(min_d))
        chosen[i] = j
        torch.addmv(norms, x, x[j], alpha=-2.0, out=d).add_(norms[j])  # squared distances to the new centre
        torch.minimum(min_d, d, out=min_d)
    if bar is not None:
        bar.close()
    return chosen


class StreamingCoreset:
    """Feed (n, D) feature rows with ``add``; ``finish(progress)`` returns the selected rows (on ``device``:
    the CPU by default, a GPU to keep the features and the greedy selection there)."""

    def __init__(self, ratio: float, dim: int, *, proj_dim: int = 128, chunk_size: int = 16384,
                 oversample: float = 4.0, final_rows: int = 65536, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        self.ratio, self.chunk_size, self.final_rows = ratio, chunk_size, final_rows
        self.keep = min(1.0, max(ratio, min(oversample * ratio, 0.05)))
        self.device = torch.device(device)  # rows kept and selected here (random draws stay on the CPU)
        self.gen = torch.Generator().manual_seed(seed)
        self.proj = None if proj_dim >= dim else \
            (torch.randn(dim, proj_dim, generator=self.gen) / math.sqrt(proj_dim)).to(self.device)
        self.pending: list[torch.Tensor] = []
        self.kept: list[torch.Tensor] = []
        self.n_seen = 0
        self.streaming = False  # True once more than final_rows patches were seen: reduce chunk by chunk

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.proj is None else x @ self.proj

    def _reduce(self, x: torch.Tensor, k: int, desc: str | None = None) -> torch.Tensor:
        if k >= x.shape[0]:
            return x
        start = int(torch.randint(x.shape[0], (1,), generator=self.gen))
        return x[greedy_kcenter(self._project(x), k, start=start, desc=desc)]

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.detach().float().to(self.device)
        self.n_seen += rows.shape[0]
        self.pending.append(rows)
        self.streaming = self.streaming or (self.ratio < 1 and self.n_seen > self.final_rows)
        if self.streaming:
            self._flush_full_chunks()

    def _flush_full_chunks(self) -> None:
        """Reduce the pending batches in groups of at least ``chunk_size`` rows, in arrival order."""
        group: list[torch.Tensor] = []
        n = 0
        for rows in self.pending:
            group.append(rows)
            n += len(rows)
            if n >= self.chunk_size:
                self._reduce_chunk(group)
                group, n = [], 0
        self.pending = group

    def _reduce_chunk(self, batches: list[torch.Tensor]) -> None:
        chunk = torch.cat(batches)
        self.kept.append(self._reduce(chunk, math.ceil(self.keep * chunk.shape[0])))

    def finish(self, progress: bool = False) -> torch.Tensor:
        if self.ratio >= 1:
            return torch.cat(self.pending)
        if self.streaming and self.pending:
            self._reduce_chunk(self.pending)
            self.pending = []
        parts = self.kept + self.pending
        pool = torch.cat(parts) if parts else torch.empty(0, device=self.device)
        self.kept, self.pending = [], []
        k = max(1, math.ceil(self.ratio * self.n_seen))
        if k >= pool.shape[0]:
            return pool
        if pool.shape[0] <= self.final_rows:
            return self._reduce(pool, k, desc=f"coreset of {pool.shape[0]}" if progress else None)
        frac = k / pool.shape[0]  # too many survivors for one exact pass: chunked again, to k in all
        parts = pool.split(self.chunk_size)
        sizes = [math.floor(frac * len(p)) for p in parts]
        for i in range(k - sum(sizes)):
            sizes[i % len(sizes)] += 1
        return torch.cat([self._reduce(p, n) for p, n in zip(parts, sizes, strict=True)])
