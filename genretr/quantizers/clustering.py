"""K-means on item embeddings (numpy in, numpy out), shared by the identifier schemes: flat k-means (faiss or
scikit-learn; GRACE's structured IDs, image tokens), CART's MiniBatchKMeans coarse clusters (Sec. 3.2.1) and
hierarchical k-means (CART Table 4 "w/o RQ-VAE").  The codebook k-means of the residual quantizers is
`genretr.quantizers.residual.kmeans` (torch)."""
from __future__ import annotations

import os

import numpy as np

from genretr.errors import GenretrError


BACKENDS = ("faiss", "sklearn")


def kmeans(x: np.ndarray, k: int, niter: int = 20, seed: int = 0, backend: str = "faiss",
           max_points_per_centroid: int = 256, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (k, d), assignment (n,)) of k-means on the rows of x (k ≤ n).

    faiss's result depends on its thread count (summation order): `threads=1` makes it independent
    of the machine's core count, `threads=0` uses every core."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not 1 <= k <= len(x):
        raise GenretrError(f"k-means: k={k} clusters for {len(x)} points")
    if backend == "faiss":
        import faiss

        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(threads or os.cpu_count() or 1)
        try:
            km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False,
                              max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1)
            km.train(x)
            _, assign = km.index.search(x, 1)
        finally:
            faiss.omp_set_num_threads(before)
        return km.centroids.copy(), assign[:, 0].astype(np.int64)
    if backend == "sklearn":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, n_init=1, max_iter=niter, random_state=seed).fit(x)
        return km.cluster_centers_.astype(np.float32), km.labels_.astype(np.int64)
    raise GenretrError(f"k-means backend={backend} is not one of {', '.join(BACKENDS)}")


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n,) index of each row's nearest centroid (L2, as k-means assigns), a block of rows at a time."""
    x = np.asarray(x, dtype=np.float32)
    c = np.asarray(centroids, dtype=np.float32)
    norms = (c ** 2).sum(1)[None]
    return np.concatenate([(norms - 2 * x[i: i + 65536] @ c.T).argmin(1) for i in range(0, len(x), 65536)]
                          or [np.zeros(0, dtype=np.int64)]).astype(np.int64)


def cluster(x: np.ndarray, k: int, seed: int, backend: str = "sklearn") -> tuple[np.ndarray, np.ndarray]:
    """K-means of the rows of x into min(k, n) clusters → (labels (n,), centroids (k', d))."""
    k = max(1, min(int(k), len(x)))
    if k == 1:
        return np.zeros(len(x), dtype=np.int64), x.mean(0, keepdims=True)
    if k == len(x):
        return np.arange(len(x), dtype=np.int64), x.copy()
    if backend == "sklearn":
        from sklearn.cluster import MiniBatchKMeans

        km = MiniBatchKMeans(n_clusters=k, random_state=seed).fit(x)  # scikit-learn defaults, as App. C
        return km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float32)
    if backend == "faiss":
        import faiss

        km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, min_points_per_centroid=1, verbose=False)
        km.train(np.ascontiguousarray(x, dtype=np.float32))
        labels = km.index.search(np.ascontiguousarray(x, dtype=np.float32), 1)[1][:, 0]
        return labels.astype(np.int64), km.centroids.astype(np.float32)
    raise GenretrError(f"CART: unknown k-means backend {backend!r} (use 'sklearn' or 'faiss')")


def hierarchical_kmeans(x: np.ndarray, depth: int, branch: int, seed: int, backend: str = "sklearn") -> np.ndarray:
    """Codes (n, depth): level-1 k-means on all rows, then k-means within each cluster, recursively."""
    codes = np.zeros((len(x), depth), dtype=np.int64)

    def split(rows: np.ndarray, level: int) -> None:
        if level == depth or len(rows) <= 1:
            return
        labels, _ = cluster(x[rows], branch, seed + level, backend)
        codes[rows, level] = labels
        for c in np.unique(labels):
            split(rows[labels == c], level + 1)

    split(np.arange(len(x)), 0)
    return codes
