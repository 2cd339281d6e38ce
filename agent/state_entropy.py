"""PEBBLE's unsupervised pre-training bonus: k-NN state entropy and its running normalisation (ALGORITHM.md §2)."""

from __future__ import annotations

from typing import Any

import torch

# Bounds the [batch, chunk] distance block to 16 MiB of float32 whatever the buffer size.
_MAX_BLOCK_ELEMENTS = 1 << 22


# Block width for the two-stage smallest-k selection below (fastest of 32 to 256 on the 2-core CPU).
_SELECT_BLOCK = 64


def _smallest_k(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest entries of each row of `values` [Q, M] and their column indices, in no particular order.

    torch.topk over a long row costs several times the matmul that produced it. Instead: split the row into
    blocks, keep the k blocks with the smallest minima, and select among their entries only. That is exact:
    an entry x of any other block is no smaller than its block's minimum, hence than each of the k kept minima,
    so at least k entries are <= x and x is not needed for the k smallest.
    """
    rows, width = values.shape
    num_blocks = width // _SELECT_BLOCK
    if num_blocks <= k:
        return values.topk(min(k, width), dim=1, largest=False, sorted=False)
    body_width = num_blocks * _SELECT_BLOCK
    body = values[:, :body_width].reshape(rows, num_blocks, _SELECT_BLOCK)
    blocks = body.amin(dim=2).topk(k, dim=1, largest=False, sorted=False).indices.unsqueeze(2)
    offsets = torch.arange(_SELECT_BLOCK, device=values.device)
    candidates = body.gather(1, blocks.expand(rows, k, _SELECT_BLOCK)).reshape(rows, -1)
    columns = (blocks * _SELECT_BLOCK + offsets).reshape(rows, -1)
    if body_width < width:  # the ragged tail joins the candidates whole
        candidates = torch.cat([candidates, values[:, body_width:]], dim=1)
        tail = torch.arange(body_width, width, device=values.device).expand(rows, -1)
        columns = torch.cat([columns, tail], dim=1)
    smallest, picked = candidates.topk(k, dim=1, largest=False, sorted=False)
    return smallest, columns.gather(1, picked)


@torch.no_grad()
def knn_distance(queries: torch.Tensor, points: torch.Tensor, k: int, chunk_size: int | None = None) -> torch.Tensor:
    """Euclidean distance [Q, 1] from each query row to its k-th nearest row of `points` (k counts from 1).

    A query that is itself one of `points` finds itself first, at distance 0. Neighbours are ranked by
    |p|² - 2 q·p (the squared distance less |q|², which does not change a row's order), one matmul per chunk
    of `points`; only the k closest per chunk survive into a running top-k, so memory stays bounded and the
    cost is that of the distance computation itself. The expanded form loses precision when distances are
    small next to the vectors' norms, so the distance to the k survivors is recomputed from their coordinates.
    """
    num_points = points.shape[0]
    if not 1 <= k <= num_points:
        raise ValueError(f"k={k!r} is not valid; allowed: 1 <= k <= number of points ({num_points})")
    if chunk_size is None:
        chunk_size = max(k, _MAX_BLOCK_ELEMENTS // max(queries.shape[0], 1))
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} is not valid; allowed: a positive integer")
    best_rank: torch.Tensor | None = None
    best_idx: torch.Tensor | None = None
    for start in range(0, num_points, chunk_size):
        chunk = points[start : start + chunk_size]
        rank = torch.addmm(chunk.square().sum(-1).unsqueeze(0), queries, chunk.T, alpha=-2.0)
        chunk_rank, chunk_idx = _smallest_k(rank, k)
        chunk_idx += start
        if best_rank is not None:
            chunk_rank, keep = _smallest_k(torch.cat([best_rank, chunk_rank], dim=1), k)
            chunk_idx = torch.cat([best_idx, chunk_idx], dim=1).gather(1, keep)
        best_rank, best_idx = chunk_rank, chunk_idx
    neighbours = points[best_idx]  # [Q, k, dim]
    return torch.linalg.vector_norm(neighbours - queries.unsqueeze(1), dim=-1).amax(dim=1, keepdim=True)


class RunningMeanStd:
    """Running mean and (population) variance of a stream of batches, kept on the device.

    Batches are merged with the parallel algorithm of Chan, Golub and LeVeque:
        mean = mean_a + delta · n_b / (n_a + n_b),  M2 = M2_a + M2_b + delta² · n_a · n_b / (n_a + n_b).
    Deliberate fix: the original release's mean update is `mean + delta + n_b / (n_a + n_b)` (an addition where
    the product belongs), so its mean is wrong and, through delta², so is the variance that normalises the bonus;
    its M2 update is the one above. Batches enter with their population
    variance (divide by n), which is what M2 needs; the original passes torch.var's unbiased (n - 1) variance.
    """

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4, device: str | torch.device = "cpu") -> None:
        # A tiny pseudo-count of (mean 0, var 1) keeps the first division by std well defined.
        self.mean = torch.zeros(shape, device=device)
        self.var = torch.ones(shape, device=device)
        self.count = float(epsilon)

    @torch.no_grad()
    def update(self, batch: torch.Tensor) -> None:
        batch_var, batch_mean = torch.var_mean(batch, dim=0, correction=0)
        batch_count = batch.shape[0]
        total = self.count + batch_count
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * batch_count + delta.square() * (self.count * batch_count / total)
        self.mean = self.mean + delta * (batch_count / total)
        self.var = m2 / total
        self.count = total

    @property
    def inverse_std(self) -> torch.Tensor:
        """1 / std, as rsqrt(var): IEEE division and square root, rounded alike on every processor (torch.sqrt on a
        CPU is MKL's vector math, whose last bit depends on the processor; see utils.adam)."""
        return torch.rsqrt(self.var)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = state["mean"].to(self.mean.device, copy=True)
        self.var = state["var"].to(self.var.device, copy=True)
        self.count = float(state["count"])
