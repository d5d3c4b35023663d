"""Retrieval metrics over ranked item lists.

R@K is the papers' recall: a query counts as a hit when at least one of its relevant
items is among the top K (so image→text with five relevant captions is a hit if any one
is retrieved).  This is torchmetrics' `RetrievalHitRate`, not its `RetrievalRecall`
(which returns the fraction of relevant items found).  MRR@K is the mean reciprocal rank
of the first relevant item within the top K, 0 when none is.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10)


def first_hit_ranks(rankings: Sequence[Sequence[str]], relevant: Sequence[Sequence[str]]) -> np.ndarray:
    """1-based rank of the first relevant item of each query; 0 when none was retrieved."""
    if len(rankings) != len(relevant):
        raise ValueError(f"{len(rankings)} rankings for {len(relevant)} queries")
    out = np.zeros(len(rankings), dtype=np.int64)
    for i, (ranked, rel) in enumerate(zip(rankings, relevant)):
        rel = set(rel)
        for r, item in enumerate(ranked, start=1):
            if item in rel:
                out[i] = r
                break
    return out


def retrieval_metrics(rankings, relevant, ks=DEFAULT_KS, mrr_k: int = 10) -> dict[str, float]:
    """R@K for each K and MRR@mrr_k, averaged over queries."""
    ranks = first_hit_ranks(rankings, relevant)
    if len(ranks) == 0:
        return {}
    hit = ranks > 0
    out = {f"R@{k}": float(np.mean(hit & (ranks <= k))) for k in ks}
    rr = np.where(hit & (ranks <= mrr_k), 1.0 / np.maximum(ranks, 1), 0.0)
    out[f"MRR@{mrr_k}"] = float(rr.mean())
    return out
