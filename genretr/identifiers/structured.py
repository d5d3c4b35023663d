"""GRACE's structured identifier (Sec. 3.3, Fig. 3b): an item's path in a hierarchical k-means tree.

The item embeddings are clustered into k clusters; every cluster holding more than c items is
clustered again, recursively (DSI's semantic docids, Tay et al. 2022).  Each level's cluster is a
new token "C_{level}_{cluster}" (level 1 first); inside a leaf cluster (≤ c items) the item's
position is the last token, "C_{level}_{position}" one level further down.  Identifiers are unique
and similar images share a path prefix; lengths vary with the depth of each branch.

k-means: `genretr.quantizers.clustering.kmeans` (faiss by default, scikit-learn with `backend: sklearn`).
The tree's centroids are saved in the identify artifact (`structured_tree.npz`): `assign` routes a new item
down it to a leaf, where it takes the next free position (items added without retraining, issue 19).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from genretr.errors import GenretrError
from genretr.identifiers.base import SPECIAL_TOKENS, IdTable
from genretr.identifiers.common import check_embeddings, in_vocabulary
from genretr.quantizers.clustering import BACKENDS, kmeans, nearest_centroid

TREE_FILE = "structured_tree.npz"
Tree = dict[tuple, tuple[np.ndarray, np.ndarray]]  # an inner node's path -> (its non-empty clusters, their centroids)


def save_tree(tree: Tree, path: Path) -> None:
    arrays = {}
    for prefix, (clusters, centroids) in tree.items():
        name = "_".join(["node", *map(str, prefix)])
        arrays[f"{name}.clusters"], arrays[f"{name}.centroids"] = clusters, centroids
    np.savez(path, **arrays)


def load_tree(path: Path) -> Tree:
    with np.load(path) as saved:
        return {tuple(int(j) for j in key[: -len(".clusters")].split("_")[1:]):
                (saved[key], saved[key.replace(".clusters", ".centroids")])
                for key in saved.files if key.endswith(".clusters")}


def route(tree: Tree, x: np.ndarray) -> list[tuple]:
    """Each row's cluster path: from the root, the nearest non-empty cluster of every inner node, to a leaf."""
    paths: list[tuple] = [() for _ in range(len(x))]
    pending = {(): np.arange(len(x))}  # the rows standing at each node
    while pending:
        prefix, rows = pending.popitem()
        if prefix not in tree:  # a leaf
            for r in rows:
                paths[r] = prefix
            continue
        clusters, centroids = tree[prefix]
        chosen = clusters[nearest_centroid(x[rows], centroids)]
        for j in np.unique(chosen):
            pending[(*prefix, int(j))] = rows[chosen == j]
    return paths


class StructuredIdentifier:
    code_tree = True  # items sharing a code prefix are alike (hierarchical k-means): results.html draws the tree

    def __init__(self, k: int = 30, c: int = 30, niter: int = 20, seed: int = 0, backend: str = "faiss",
                 max_points_per_centroid: int = 256, threads: int = 1):
        if k < 2 or c < 1:
            raise GenretrError(f"structured identifiers need k >= 2 clusters and leaf size c >= 1 (k={k}, c={c})")
        if backend not in BACKENDS:
            raise GenretrError(f"identifier.backend={backend} is not one of {', '.join(BACKENDS)}")
        self.k, self.c, self.niter, self.seed = k, c, niter, seed
        self.backend, self.max_points_per_centroid, self.threads = backend, max_points_per_centroid, threads

    def paths(self, x: np.ndarray) -> tuple[list[list[int]], Tree]:
        """Each row's path (cluster index at every level, then its position in its leaf cluster) and the tree's
        inner nodes."""
        paths: list[list[int]] = [[] for _ in range(len(x))]
        tree: Tree = {}

        def split(rows: np.ndarray, prefix: tuple) -> None:
            if len(rows) <= self.c:  # a leaf: the position within the cluster ends the path
                for pos, r in enumerate(rows):
                    paths[r].append(pos)
                return
            k = min(self.k, len(rows))
            centroids, assign = kmeans(x[rows], k, self.niter, self.seed + len(prefix), self.backend,
                                       self.max_points_per_centroid, self.threads)
            if np.bincount(assign, minlength=k).max() == len(rows):  # identical vectors: split arbitrarily
                assign = np.arange(len(rows)) % k
                centroids = np.stack([x[rows[assign == j]].mean(0) for j in range(k)])
            used = np.unique(assign)
            tree[prefix] = (used, np.ascontiguousarray(centroids[used], dtype=np.float32))
            for j in used.tolist():
                members = rows[assign == j]
                for r in members:
                    paths[r].append(j)
                split(members, (*prefix, j))

        split(np.arange(len(x)), ())
        return paths, tree

    def build(self, items, embeddings, ctx) -> IdTable:
        x = check_embeddings(items, embeddings, "structured")
        paths, tree = self.paths(x)
        if ctx.workdir is not None:
            save_tree(tree, Path(ctx.workdir) / TREE_FILE)
        names = [[f"C_{level}_{j}" for level, j in enumerate(p, start=1)] for p in paths]
        used = sorted({t for ts in names for t in ts}, key=lambda t: tuple(int(v) for v in t.split("_")[1:]))
        index = {t: i for i, t in enumerate(SPECIAL_TOKENS + used)}
        return IdTable.from_lists([it.id for it in items], [[index[t] for t in ts] for ts in names],
                                  SPECIAL_TOKENS + used, new_tokens=used)

    def assign(self, items, embeddings: np.ndarray, ctx, table: IdTable) -> IdTable:
        """Identifiers of new items: each routed down the saved tree (`structured_tree.npz` in the identify
        artifact, `ctx.workdir`) to a leaf, where it takes the position after the last held there (by the leaf's
        items and earlier additions), in `table`'s vocabulary (issue 19).  A position token is the same token as
        a cluster index of that level, so a position past the leaf size c passes the vocabulary check when k > c:
        the decoder has seen the token, though not as a position."""
        x = check_embeddings(items, embeddings, "structured")
        if not (Path(ctx.workdir) / TREE_FILE).is_file():
            raise GenretrError(f"{ctx.workdir}: no {TREE_FILE} (a run made before genretr kept its k-means tree): "
                               "rerun it to add items")
        last: dict[tuple, int] = {}  # a leaf's path -> the largest position held in it
        for iid in table.item_ids:
            ws = [table.vocab[t] for t in table.tokens(iid)[:-1]]
            last[tuple(ws[:-1])] = max(last.get(tuple(ws[:-1]), -1), int(ws[-1].rsplit("_", 1)[1]))
        words = []
        for path in route(load_tree(Path(ctx.workdir) / TREE_FILE), x):
            prefix = tuple(f"C_{level}_{j}" for level, j in enumerate(path, start=1))
            last[prefix] = last.get(prefix, -1) + 1
            words.append([*prefix, f"C_{len(prefix) + 1}_{last[prefix]}"])
        return in_vocabulary(table, [it.id for it in items], words, "structured")
