"""GRACE's structured identifier (Sec. 3.3, Fig. 3b): an item's path in a hierarchical k-means tree.

The item embeddings are clustered into k clusters; every cluster holding more than c items is
clustered again, recursively (DSI's semantic docids, Tay et al. 2022).  Each level's cluster is a
new token "C_{level}_{cluster}" (level 1 first); inside a leaf cluster (≤ c items) the item's
position is the last token, "C_{level}_{position}" one level further down.  Identifiers are unique
and similar images share a path prefix; lengths vary with the depth of each branch.

k-means: `genretr.quantizers.clustering.kmeans` (faiss by default, scikit-learn with `backend: sklearn`).
"""
from __future__ import annotations


import numpy as np

from genretr.errors import GenretrError
from genretr.identifiers.base import SPECIAL_TOKENS, IdTable
from genretr.identifiers.common import check_embeddings
from genretr.quantizers.clustering import BACKENDS, kmeans


class StructuredIdentifier:
    code_tree = True  # items sharing a code prefix are alike (hierarchical k-means): results.html draws the tree

    # why genretr.add refuses new items (issue 19)
    cannot_add = "the run keeps no model of its codes (the hierarchical k-means tree is not saved)"

    def __init__(self, k: int = 30, c: int = 30, niter: int = 20, seed: int = 0, backend: str = "faiss",
                 max_points_per_centroid: int = 256, threads: int = 1):
        if k < 2 or c < 1:
            raise GenretrError(f"structured identifiers need k >= 2 clusters and leaf size c >= 1 (k={k}, c={c})")
        if backend not in BACKENDS:
            raise GenretrError(f"identifier.backend={backend} is not one of {', '.join(BACKENDS)}")
        self.k, self.c, self.niter, self.seed = k, c, niter, seed
        self.backend, self.max_points_per_centroid, self.threads = backend, max_points_per_centroid, threads

    def paths(self, x: np.ndarray) -> list[list[int]]:
        """Each row's path: cluster index at every level, then its position in its leaf cluster."""
        paths: list[list[int]] = [[] for _ in range(len(x))]

        def split(rows: np.ndarray, depth: int) -> None:
            if len(rows) <= self.c:  # a leaf: the position within the cluster ends the path
                for pos, r in enumerate(rows):
                    paths[r].append(pos)
                return
            k = min(self.k, len(rows))
            _, assign = kmeans(x[rows], k, self.niter, self.seed + depth, self.backend, self.max_points_per_centroid,
                               self.threads)
            if np.bincount(assign, minlength=k).max() == len(rows):  # identical vectors: split arbitrarily
                assign = np.arange(len(rows)) % k
            for j in range(k):
                members = rows[assign == j]
                for r in members:
                    paths[r].append(j)
                if len(members):
                    split(members, depth + 1)

        split(np.arange(len(x)), 0)
        return paths

    def build(self, items, embeddings, ctx) -> IdTable:
        x = check_embeddings(items, embeddings, "structured")
        names = [[f"C_{level}_{j}" for level, j in enumerate(p, start=1)] for p in self.paths(x)]
        used = sorted({t for ts in names for t in ts}, key=lambda t: tuple(int(v) for v in t.split("_")[1:]))
        index = {t: i for i, t in enumerate(SPECIAL_TOKENS + used)}
        return IdTable.from_lists([it.id for it in items], [[index[t] for t in ts] for ts in names],
                                  SPECIAL_TOKENS + used, new_tokens=used)
