"""Evaluation across ranks without DistributedSampler's duplicate padding.

Each rank searches a contiguous, unpadded shard of the queries; the shards are gathered
with `all_gather_object` and concatenated in rank order, so every query is scored once.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def rank_zero() -> bool:
    """True outside torch.distributed and on its rank 0 (the process that writes a run's files)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous [start, end) of rank `rank`; sizes differ by at most one, none padded."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def sharded(search, query_vecs):
    """Run `search(query_vecs) -> (rankings, q_per_s)` over this rank's shard and gather all shards."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return search(query_vecs)
    from genretr.decoding import queries as Q

    rank, world = dist.get_rank(), dist.get_world_size()
    start, end = shard_bounds(Q.count(query_vecs), rank, world)
    rankings, qps = search(Q.take(query_vecs, start, end)) if end > start else ([], 0.0)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, (rankings, qps))
    return [r for part, _ in gathered for r in part], sum(q for _, q in gathered)
