"""GRACE's image-tokenization identifier (Appendix C, following IRGen): 4 visual tokens per image.

Each item embedding is discretised by residual quantization: k-means on the embeddings gives the
level-1 code, k-means on what is left (embedding minus its level-1 centroid) the level-2 code, and
so on for `levels` levels.  The tokens are "v{level}_{code}"; the vocabulary is every codebook
entry of every level.  Near-identical images may get the same codes: by default such items share
the identifier (the trie maps it to all of them); `disambiguate: true` appends a counter token
"#j" to the j-th item of each shared group, making every identifier unique.

The codebooks are saved in the identify artifact (`image_token_codebooks.npy`): `assign` codes new items with
them (items added without retraining, issue 19).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from genretr.errors import GenretrError
from genretr.identifiers.base import SPECIAL_TOKENS, IdTable
from genretr.identifiers.common import (append_counters, check_embeddings, continued_groups, counter_tokens,
                                       in_vocabulary)
from genretr.quantizers.clustering import BACKENDS, kmeans, nearest_centroid

log = logging.getLogger(__name__)
CODEBOOKS_FILE = "image_token_codebooks.npy"


def residual_quantize(x: np.ndarray, levels: int, codebook_size: int, niter: int = 20, seed: int = 0,
                      backend: str = "faiss", max_points_per_centroid: int = 256, threads: int = 1,
                      codebooks: list | None = None) -> np.ndarray:
    """(n, levels) codes: level l quantizes the residual left by levels < l (one k-means per level).  Each
    level's centroids are appended to `codebooks` when it is given."""
    residual = np.array(x, dtype=np.float32)
    codes = np.empty((len(x), levels), dtype=np.int64)
    for level in range(levels):
        centroids, codes[:, level] = kmeans(residual, codebook_size, niter, seed + level, backend,
                                            max_points_per_centroid, threads)
        residual -= centroids[codes[:, level]]
        if codebooks is not None:
            codebooks.append(centroids)
        log.info("residual quantization level %d: mean residual norm %.4f", level + 1,
                 float(np.linalg.norm(residual, axis=1).mean()))
    return codes


def residual_codes(x: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """(n, levels) codes of the rows of x under saved (levels, K, d) codebooks: the nearest entry of each level
    to what the levels before it left."""
    residual = np.array(x, dtype=np.float32)
    codes = np.empty((len(x), len(codebooks)), dtype=np.int64)
    for level, centroids in enumerate(codebooks):
        codes[:, level] = nearest_centroid(residual, centroids)
        residual -= centroids[codes[:, level]]
    return codes


class ImageTokenIdentifier:
    code_tree = True  # items sharing a code prefix are alike (residual codes): results.html draws the tree

    def __init__(self, levels: int = 4, codebook_size: int = 256, niter: int = 20, seed: int = 0,
                 disambiguate: bool = False, backend: str = "faiss", max_points_per_centroid: int = 256,
                 threads: int = 1):
        if levels < 1 or codebook_size < 2:
            raise GenretrError(f"image tokens need levels >= 1 and codebook_size >= 2 ({levels}, {codebook_size})")
        if backend not in BACKENDS:
            raise GenretrError(f"identifier.backend={backend} is not one of {', '.join(BACKENDS)}")
        self.levels, self.codebook_size, self.niter, self.seed = levels, codebook_size, niter, seed
        self.disambiguate, self.backend = disambiguate, backend
        self.max_points_per_centroid, self.threads = max_points_per_centroid, threads

    def build(self, items, embeddings, ctx) -> IdTable:
        x = check_embeddings(items, embeddings, "image-token")
        K = min(self.codebook_size, len(items))
        codebooks: list = []
        codes = residual_quantize(x, self.levels, K, self.niter, self.seed, self.backend,
                                  self.max_points_per_centroid, self.threads, codebooks)
        if ctx.workdir is not None:
            np.save(Path(ctx.workdir) / CODEBOOKS_FILE, np.stack(codebooks))
        code_tokens = [f"v{level}_{c}" for level in range(1, self.levels + 1) for c in range(K)]
        seqs = [[f"v{level}_{c}" for level, c in enumerate(row, start=1)] for row in codes.tolist()]
        new_tokens = list(code_tokens)
        if self.disambiguate:
            seqs = append_counters(seqs)
            new_tokens += counter_tokens(seqs)
        vocab = SPECIAL_TOKENS + new_tokens
        index = {t: i for i, t in enumerate(vocab)}
        return IdTable.from_lists([it.id for it in items], [[index[t] for t in s] for s in seqs], vocab,
                                  new_tokens=new_tokens)

    def assign(self, items, embeddings: np.ndarray, ctx, table: IdTable) -> IdTable:
        """Identifiers of new items from the saved codebooks (`image_token_codebooks.npy` in the identify
        artifact, `ctx.workdir`), in `table`'s vocabulary (issue 19).  A new item may share its codes with items of
        the table (the trie maps a code to all its items); with `disambiguate` it takes the next counter of its group
        ("#n" after n holders), so that every identifier stays unique."""
        x = check_embeddings(items, embeddings, "image-token")
        if not (Path(ctx.workdir) / CODEBOOKS_FILE).is_file():
            raise GenretrError(f"{ctx.workdir}: no {CODEBOOKS_FILE} (a run made before genretr kept its codebooks): "
                               "rerun it to add items")
        codes = residual_codes(x, np.load(Path(ctx.workdir) / CODEBOOKS_FILE))
        words = [[f"v{level}_{c}" for level, c in enumerate(row, start=1)] for row in codes.tolist()]
        if self.disambiguate:
            words = continued_groups(table, words)
        return in_vocabulary(table, [it.id for it in items], words, "image-token")
