"""The embedding search's faiss indexes (genretr.evaluation.embedding): flat is exact and added in blocks; IVF
probing every cell is exact too; HNSW is approximate but close; bad options are one-line errors."""
from __future__ import annotations

import numpy as np
import pytest

from genretr.errors import GenretrError
from genretr.evaluation import embedding
from genretr.evaluation.embedding import build_index, search_index
from genretr.validate import validate


def data(n=3000, q=200, d=32, seed=0):
    rng = np.random.default_rng(seed)
    pool = rng.normal(size=(n, d)).astype(np.float32)
    queries = pool[rng.choice(n, q, replace=False)] + 0.3 * rng.normal(size=(q, d)).astype(np.float32)
    return queries, pool, [f"p{i}" for i in range(n)]


def brute_force(queries, pool, ids, k=10):
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    scores = unit(queries) @ unit(pool).T
    return [[ids[j] for j in np.argsort(-row, kind="stable")[:k]] for row in scores]


def test_flat_is_exact_and_blocks_change_nothing(monkeypatch):
    queries, pool, ids = data()
    whole, _ = search_index(build_index(pool), queries, ids)
    assert whole == brute_force(queries, pool, ids)
    monkeypatch.setattr(embedding, "BLOCK", 7)  # 429 blocks
    assert search_index(build_index(pool), queries, ids)[0] == whole


def test_ivf_probing_every_cell_is_exact_and_hnsw_is_close():
    queries, pool, ids = data()
    exact = brute_force(queries, pool, ids)
    assert search_index(build_index(pool, "ivf", nlist=16, nprobe=16), queries, ids)[0] == exact
    few = search_index(build_index(pool, "ivf", nlist=64, nprobe=1), queries, ids)[0]
    hnsw = search_index(build_index(pool, "hnsw", hnsw_m=16, ef_search=64), queries, ids)[0]
    recall = lambda got: np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact)])  # noqa: E731
    assert recall(hnsw) >= 0.9 and recall(few) < 1.0  # one probed cell of 64 loses neighbours


def test_bad_index_options_are_one_line_errors(make_cfg):
    with pytest.raises(GenretrError, match="eval.index=annoy is not one of flat, ivf, hnsw"):
        validate(make_cfg("method=embedding", "eval.index=annoy"))
    with pytest.raises(GenretrError, match="eval.index_options: probes is not one of nlist, nprobe"):
        validate(make_cfg("method=embedding", "+eval.index_options.probes=3"))
    with pytest.raises(GenretrError, match="is not one of flat, ivf, hnsw"):
        build_index(np.zeros((3, 2), np.float32), "annoy")


def test_an_embedding_run_searches_through_the_configured_index(make_cfg, tmp_path):
    from genretr.pipeline import Pipeline

    cfg = make_cfg("method=embedding", "eval.index=ivf", "+eval.index_options.nlist=2", "+eval.index_options.nprobe=2")
    validate(cfg)
    exact = Pipeline(make_cfg("method=embedding", run="flat"), tmp_path / "flat").run()
    assert Pipeline(cfg, tmp_path / "run").run()["t2i"]["R@10"] == exact["t2i"]["R@10"]  # every cell probed
