"""genretr.evaluation.metrics: hand-computed cases and a cross-check against torchmetrics."""
import random

import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR, RetrievalRecall

from genretr.evaluation.metrics import first_hit_ranks, metrics_from_ranks, per_query_scores, retrieval_metrics

# Six queries over items named by string; first relevant hit at ranks 1, 3, none, 5, 10, 11.
RANKINGS = [
    ["a", "b", "c", "d"],                                        # q0: hit at 1
    ["n1", "n2", "cap2", "cap4", "n3"],                          # q1: i2t, 5 captions, 2 ranked: first at 3
    ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"],     # q2: relevant never ranked
    ["x1", "x2", "x3", "x4", "hit", "hit2"],                     # q3: hit exactly at K=5
    [f"m{i}" for i in range(1, 10)] + ["hit", "z"],              # q4: hit exactly at K=10
    [f"m{i}" for i in range(1, 11)] + ["hit"],                   # q5: hit at 11: beyond every K
]
RELEVANT = [
    ["a"],
    ["cap0", "cap1", "cap2", "cap3", "cap4"],
    ["zzz"],
    ["hit", "hit2"],
    ["hit"],
    ["hit"],
]


def test_first_hit_ranks_hand_computed():
    assert first_hit_ranks(RANKINGS, RELEVANT).tolist() == [1, 3, 0, 5, 10, 11]


def test_per_query_scores_hand_computed():
    ranks = first_hit_ranks(RANKINGS, RELEVANT)                     # 1, 3, 0, 5, 10, 11
    assert per_query_scores(ranks, "R@1").tolist() == [1, 0, 0, 0, 0, 0]
    assert per_query_scores(ranks, "R@5").tolist() == [1, 1, 0, 1, 0, 0]
    assert per_query_scores(ranks, "R@10").tolist() == [1, 1, 0, 1, 1, 0]
    assert per_query_scores(ranks, "MRR@10").tolist() == pytest.approx([1, 1 / 3, 0, 1 / 5, 1 / 10, 0])
    for bad in ("P@5", "R@0", "MRR@x", "R1", "q_per_s"):
        with pytest.raises(ValueError):
            per_query_scores(ranks, bad)


def test_per_query_scores_average_to_retrieval_metrics():
    """per_query.json keeps only ranks: their per-query outcomes must give back results.json's metrics."""
    rankings, relevant, _ = _random_queries(seed=2)
    ranks = first_hit_ranks(rankings, relevant)
    metrics = retrieval_metrics(rankings, relevant, ks=(1, 3, 5, 10), mrr_k=5)
    assert metrics == metrics_from_ranks(ranks, ks=(1, 3, 5, 10), mrr_k=5)
    for name, value in metrics.items():
        assert per_query_scores(ranks, name).mean() == pytest.approx(value)
    assert metrics_from_ranks([]) == {}


def test_retrieval_metrics_hand_computed():
    m = retrieval_metrics(RANKINGS, RELEVANT)
    assert set(m) == {"R@1", "R@5", "R@10", "MRR@10"}
    assert m["R@1"] == pytest.approx(1 / 6)           # q0
    assert m["R@5"] == pytest.approx(3 / 6)           # q0, q1, q3 (rank 5 counts at K=5)
    assert m["R@10"] == pytest.approx(4 / 6)          # + q4 (rank 10 counts at K=10); q5 at 11 does not
    assert m["MRR@10"] == pytest.approx((1 + 1 / 3 + 1 / 5 + 1 / 10) / 6)   # q5's 1/11 is cut off


def test_ties_duplicates_and_empty_rankings():
    # Two queries tied at rank 2, a duplicated item (first occurrence counts), an empty ranking.
    rankings = [["b", "a"], ["c", "d", "d"], ["x", "x", "y"], []]
    relevant = [["a"], ["d"], ["y"], ["a"]]
    assert first_hit_ranks(rankings, relevant).tolist() == [2, 2, 3, 0]
    m = retrieval_metrics(rankings, relevant, ks=(1, 2, 3), mrr_k=2)
    assert m == pytest.approx({"R@1": 0.0, "R@2": 0.5, "R@3": 0.75, "MRR@2": (0.5 + 0.5) / 4})


def test_edge_cases():
    assert retrieval_metrics([], []) == {}
    with pytest.raises(ValueError):
        first_hit_ranks([["a"]], [["a"], ["b"]])
    assert retrieval_metrics([["a"]], [[]]) == {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0, "MRR@10": 0.0}


def _as_torchmetrics(rankings, relevant, candidates):
    """Flatten to torchmetrics' (indexes, preds, target): every candidate of each query.

    Ranked items score 1/rank; unranked candidates (relevant or not) a tiny positive score
    below every ranked one (torchmetrics >= 1.8 treats scores <= 0 as not retrieved).  Top K by
    score then equals our "top K of the ranked list" only when every ranking has >= K items,
    otherwise unranked candidates would fill the top K (see test_short_rankings_diverge).
    """
    idx, preds, target = [], [], []
    for q, (ranked, rel, cands) in enumerate(zip(rankings, relevant, candidates)):
        rank = {item: r for r, item in enumerate(ranked, start=1)}
        for j, c in enumerate(cands):
            idx.append(q)
            preds.append(1.0 / rank[c] if c in rank else 1e-6 / (j + 1))
            target.append(c in rel)
    return torch.tensor(idx), torch.tensor(preds), torch.tensor(target)


def _random_queries(seed=0, n=200, n_cand=20, min_len=10):
    rng = random.Random(seed)
    rankings, relevant, candidates = [], [], []
    for _ in range(n):
        cands = [f"c{j}" for j in range(n_cand)]
        relevant.append(rng.sample(cands, rng.randint(1, 5)))
        rankings.append(rng.sample(cands, rng.randint(min_len, n_cand)))   # some relevant left unranked
        candidates.append(cands)
    return rankings, relevant, candidates


def _tm(metric, data):
    idx, preds, target = data
    return float(metric(preds, target, indexes=idx))


def test_cross_check_against_torchmetrics():
    rankings, relevant, candidates = _random_queries()
    data = _as_torchmetrics(rankings, relevant, candidates)
    ours = retrieval_metrics(rankings, relevant)
    ranks = first_hit_ranks(rankings, relevant)
    assert 0 < ours["R@1"] < ours["R@5"] < ours["R@10"] < 1      # the data exercises hits and misses
    assert ((ranks == 0) | (ranks > 10)).any() and (ranks > 10).any()
    for k in (1, 5, 10):
        assert ours[f"R@{k}"] == pytest.approx(_tm(RetrievalHitRate(top_k=k), data), abs=1e-6)
    assert ours["MRR@10"] == pytest.approx(_tm(RetrievalMRR(top_k=10), data), abs=1e-6)


def test_torchmetrics_recall_is_not_our_recall():
    """RetrievalRecall is the fraction of relevant items found; the papers' R@K is a hit rate."""
    rankings, relevant, candidates = _random_queries(seed=1)
    data = _as_torchmetrics(rankings, relevant, candidates)
    ours = retrieval_metrics(rankings, relevant)
    for k in (1, 5, 10):
        assert _tm(RetrievalRecall(top_k=k), data) < ours[f"R@{k}"] - 0.01
    # Hand case q1: 5 relevant captions, 2 of them in the top 5 -> recall 0.4, but a hit for us.
    data = _as_torchmetrics(RANKINGS[1:2], RELEVANT[1:2], [RANKINGS[1] + ["cap0", "cap1", "cap3"]])
    assert _tm(RetrievalRecall(top_k=5), data) == pytest.approx(0.4)
    assert retrieval_metrics(RANKINGS[1:2], RELEVANT[1:2])["R@5"] == 1.0


def test_short_rankings_diverge():
    """Why the cross-check keeps every ranking >= max K: with a 1-item ranking, torchmetrics'
    top 5 by score also takes unranked candidates, so a relevant item never retrieved counts."""
    rankings, relevant, candidates = [["c0"]], [["c2"]], [["c0", "c1", "c2"]]
    assert retrieval_metrics(rankings, relevant, ks=(5,))["R@5"] == 0.0
    assert _tm(RetrievalHitRate(top_k=5), _as_torchmetrics(rankings, relevant, candidates)) == 1.0
