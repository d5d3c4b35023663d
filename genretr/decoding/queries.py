"""Query batches as the decoders take them: a Tensor (query vectors), a dict of Tensors sharing dim 0
(e.g. ``{"z": vectors, "src": token ids}``; ``encoder_z``: the encoder's vectors when ``z`` is in a scheme's
own space, GENIUS Eq. 9), or a list (samples for an MLLM processor)."""
from __future__ import annotations

import torch


def count(queries) -> int:
    if isinstance(queries, dict):
        return len(next(iter(queries.values())))
    return len(queries)


def take(queries, start: int, end: int):
    """Rows [start, end) of every part."""
    if isinstance(queries, dict):
        return {k: v[start:end] for k, v in queries.items()}
    return queries[start:end]


def to_device(queries, device):
    if isinstance(queries, torch.Tensor):
        return queries.to(device)
    if isinstance(queries, dict):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in queries.items()}
    return queries


def encoder_vectors(queries) -> torch.Tensor:
    """The queries' vectors in the encoder's space (what re-ranking and cosine scores compare with items)."""
    if isinstance(queries, dict):
        return queries.get("encoder_z", queries["z"])
    return queries
