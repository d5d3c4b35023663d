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


def per_query_scores(ranks, metric: str) -> np.ndarray:
    """Each query's value of `metric` from its first-hit rank (`first_hit_ranks`): for R@K the hit
    indicator 1 <= rank <= K, for MRR@K 1/rank when 1 <= rank <= K, else 0.  Their mean is the metric."""
    ranks = np.asarray(ranks, dtype=np.int64)
    name, _, k = metric.partition("@")
    if name not in ("R", "MRR") or not k.isdigit() or int(k) < 1:
        raise ValueError(f"no per-query form of metric {metric!r} (R@K and MRR@K have one)")
    hit = (ranks >= 1) & (ranks <= int(k))
    return hit.astype(float) if name == "R" else np.where(hit, 1.0 / np.maximum(ranks, 1), 0.0)


def metrics_from_ranks(ranks, ks=DEFAULT_KS, mrr_k: int = 10) -> dict[str, float]:
    """R@K for each K and MRR@mrr_k, averaged over queries, from their first-hit ranks."""
    if len(ranks) == 0:
        return {}
    names = [f"R@{k}" for k in ks] + [f"MRR@{mrr_k}"]
    return {m: float(np.mean(per_query_scores(ranks, m))) for m in names}


def retrieval_metrics(rankings, relevant, ks=DEFAULT_KS, mrr_k: int = 10) -> dict[str, float]:
    """R@K for each K and MRR@mrr_k, averaged over queries."""
    return metrics_from_ranks(first_hit_ranks(rankings, relevant), ks, mrr_k)
