"""Embedding re-ranking of beam candidates (GENIUS_R, GENIUS Sec. 4.4 / Table 1).

The decoder proposes candidates (the items behind its beams); GENIUS_R re-scores those items by the
cosine similarity of their embedding with the query embedding and re-sorts them.  Vectorised: one
lookup of every candidate's vector and one batched cosine for all queries.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F


def _lookup(item_vec_lookup, ids: list) -> torch.Tensor:
    if isinstance(item_vec_lookup, Mapping):
        return torch.stack([torch.as_tensor(np.asarray(item_vec_lookup[i])) for i in ids])
    vecs = item_vec_lookup(ids)
    return vecs if isinstance(vecs, torch.Tensor) else torch.as_tensor(np.asarray(vecs))


def rerank(rankings: list[list], query_vecs, item_vec_lookup: Callable | Mapping, top_k: int | None = None,
           return_scores: bool = False):
    """Re-sort each query's candidates by cosine(query vector, item vector), best first (stable on ties).

    `item_vec_lookup`: a callable ids -> (n, d) vectors (e.g. `Embeddings.items`) or a mapping id -> vector.
    Returns the re-ranked lists (cut to `top_k` if given), and their cosines if `return_scores`."""
    q = torch.as_tensor(np.asarray(query_vecs) if not isinstance(query_vecs, torch.Tensor) else query_vecs).float()
    if len(rankings) != len(q):
        raise ValueError(f"{len(rankings)} rankings but {len(q)} query vectors")
    flat = [i for r in rankings for i in r]
    out, scores = [], []
    if flat:
        vecs = _lookup(item_vec_lookup, flat).float().to(q.device)
        owner = torch.repeat_interleave(torch.arange(len(rankings), device=q.device),
                                        torch.tensor([len(r) for r in rankings], device=q.device))
        cos = (F.normalize(vecs, dim=-1) * F.normalize(q, dim=-1)[owner]).sum(-1).cpu()
    else:
        cos = torch.empty(0)
    start = 0
    for r in rankings:
        c = cos[start:start + len(r)]
        start += len(r)
        order = torch.sort(c, descending=True, stable=True).indices.tolist()
        if top_k is not None:
            order = order[:top_k]
        out.append([r[j] for j in order])
        scores.append([float(c[j]) for j in order])
    return (out, scores) if return_scores else out
