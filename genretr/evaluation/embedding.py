"""`method=embedding`: the two-tower baseline row of every paper's table.

Cosine ranking over L2-normalised vectors with a faiss index (`eval.index`): `flat` (`IndexFlatIP`, exact, the
default), or for multi-million pools `ivf` (`IndexIVFFlat`: `nlist` k-means cells, `nprobe` searched) or `hnsw`
(`IndexHNSWFlat`: `hnsw_m` links, `ef_search`), both approximate.  The pool is normalised and added a block at a
time, so no normalised copy of a large pool is made at once.
"""
from __future__ import annotations

import math
import time

import faiss
import numpy as np

from genretr.errors import GenretrError

INDEXES = ("flat", "ivf", "hnsw")
BLOCK = 65_536  # pool rows normalised and added at a time


def _normalise(x) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def build_index(pool_vecs, kind: str = "flat", nlist: int | None = None, nprobe: int = 32, hnsw_m: int = 32,
                ef_search: int = 128, seed: int = 0):
    """A faiss inner-product index over the normalised rows of `pool_vecs` (n, d), added in blocks."""
    n, d = pool_vecs.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        cells = max(1, min(n, int(nlist or 4 * math.sqrt(n))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(n, size=min(n, 64 * cells), replace=False)
        index.train(_normalise(pool_vecs[np.sort(sample)]))
        index.nprobe = max(1, min(int(nprobe), cells))
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = int(ef_search)
    else:
        raise GenretrError(f"eval.index={kind} is not one of {', '.join(INDEXES)}")
    for s in range(0, n, BLOCK):
        index.add(_normalise(pool_vecs[s:s + BLOCK]))
    return index


def search_index(index, query_vecs, pool_ids: list[str], top_k: int = 10):
    """Ranked item ids per query, and queries/s of the search alone."""
    q = _normalise(query_vecs)
    t0 = time.perf_counter()
    _, idx = index.search(q, min(top_k, len(pool_ids)))
    elapsed = time.perf_counter() - t0
    return [[pool_ids[j] for j in row if j >= 0] for row in idx], len(q) / max(elapsed, 1e-9)


def embedding_search(query_vecs, pool_vecs, pool_ids: list[str], top_k: int = 10):
    """Ranked item ids per query (exact), and queries/s of the search alone."""
    return search_index(build_index(pool_vecs), query_vecs, pool_ids, top_k)
