"""CART's coarse-to-fine identifiers (Sec. 3.2; Appendix C, G; ablations of Table 4).

An item's identifier is (k, v_1..v_M, u):
- coarse token k (Sec. 3.2.1): its MiniBatchKMeans cluster (scikit-learn, K = 128; `backend="faiss"`
  uses faiss k-means); K is clamped to the number of items;
- fine tokens v_1..v_M (Sec. 3.2.2): RQ-VAE codes of the residual, embedding minus its centroid;
- unique token u (Sec. 3.2.3): a prefix-database counter — the first item with a given
  (k, v_1..v_M) gets 0, the next 1, ... — so every identifier is unique.

Ablations (Table 4): `use_kmeans=False` drops k and runs the RQ-VAE on the embedding itself;
`use_rqvae=False` replaces the RQ-VAE by hierarchical k-means — recursive k-means on each
cluster's members, `codebook_size` branches, `num_codebooks` levels deep (a K-fork tree whose
root-to-leaf path is the identifier, as GRACE's structured IDs).

Tokens are level-specific words, so the vocabulary is word-level: `c12` (coarse), `a1_57` and
`a2_3` (fine level 1 and 2), `u0` (counter).  The vocabulary holds every coarse and fine token
of the configured sizes, and the counter tokens used.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from genretr.errors import GenretrError
from genretr.identifiers.base import SPECIAL_TOKENS, IdTable
from genretr.identifiers.common import colliding_items, continued_counters, in_vocabulary, unique_counters
from genretr.quantizers.clustering import cluster, hierarchical_kmeans, nearest_centroid
from genretr.quantizers.rqvae import RQVAE, fit_rqvae

log = logging.getLogger(__name__)


class CartIdentifier:
    code_tree = True  # items sharing a code prefix are alike (coarse-to-fine codes): results.html draws the tree

    def __init__(self, k: int = 128, use_kmeans: bool = True, use_rqvae: bool = True, num_codebooks: int = 2,
                 codebook_size: int = 128, latent_dim: int = 64, hidden: list[int] = (512, 256, 128),
                 epochs: int = 50, warmup_epochs: float = 30, batch_size: int = 256, lr: float = 1e-3,
                 init_lr: float = 1e-6, alpha: float = 1.0, beta: float = 0.25, update: str = "grad",
                 dead_after: int = 50, backend: str = "sklearn", seed: int | None = None):
        if not (use_kmeans or use_rqvae):
            raise GenretrError("CART: use_kmeans and use_rqvae cannot both be false (no semantic tokens left)")
        if num_codebooks < 1 or codebook_size < 1 or k < 1:
            raise GenretrError(f"CART: k, num_codebooks, codebook_size must be >= 1, got {k}, {num_codebooks}, "
                               f"{codebook_size}")
        if backend not in ("sklearn", "faiss"):
            raise GenretrError(f"CART: unknown k-means backend {backend!r} (use 'sklearn' or 'faiss')")
        self.k, self.use_kmeans, self.use_rqvae, self.backend = k, use_kmeans, use_rqvae, backend
        self.num_codebooks, self.codebook_size, self.seed = num_codebooks, codebook_size, seed
        self.rqvae_kwargs = dict(hidden=list(hidden), latent_dim=latent_dim, num_codebooks=num_codebooks,
                                 codebook_size=codebook_size, lr=lr, init_lr=init_lr, alpha=alpha, beta=beta,
                                 update=update, dead_after=dead_after)
        self.epochs, self.warmup_epochs, self.batch_size = epochs, warmup_epochs, batch_size
        self.stats: dict = {}

    def build(self, items, embeddings: np.ndarray, ctx) -> IdTable:
        x = np.asarray(embeddings, dtype=np.float32)
        if not items or x.ndim != 2 or len(x) != len(items) or not np.isfinite(x).all():
            raise GenretrError(f"CART: need finite embeddings (n_items={len(items)} > 0, d), got shape {x.shape}")
        seed = int(self.seed if self.seed is not None else ctx.seed)
        workdir = ctx.workdir
        stats: dict = {"items": len(items)}

        coarse, centroids, residual = None, None, x
        if self.use_kmeans:
            coarse, centroids = cluster(x, self.k, seed, self.backend)
            residual = centroids[coarse]  # (n, d), then x minus it in place: one copy of the vectors, not two
            np.subtract(x, residual, out=residual)
            stats["coarse_clusters"] = int(len(centroids))
            stats["coarse_usage"] = len(np.unique(coarse)) / len(centroids)
            if workdir is not None:
                np.save(workdir / "cart_centroids.npy", centroids)

        if self.use_rqvae:
            model, fine = fit_rqvae(residual, seed=seed, max_epochs=self.epochs, batch_size=self.batch_size,
                                    warmup_epochs=self.warmup_epochs, progress=bool(ctx.progress),
                                    device=ctx.device, **self.rqvae_kwargs)
            m = model.metrics(torch.from_numpy(residual))
            stats.update(rqvae_recon_mse=m["recon_mse"], rqvae_recon_rel_error=m["recon_rel_error"],
                         rqvae_latent_rel_error=m["latent_rel_error"], fine_usage=m["usage"])
            if workdir is not None:
                torch.save({"hparams": dict(model.hparams), "state_dict": model.state_dict()}, workdir / "rqvae.pt")
        else:  # "w/o RQ-VAE": hierarchical k-means, within each coarse cluster when there is one
            groups = coarse if coarse is not None else np.zeros(len(x), dtype=np.int64)
            fine = np.zeros((len(x), self.num_codebooks), dtype=np.int64)
            for g in np.unique(groups):
                rows = np.flatnonzero(groups == g)
                fine[rows] = hierarchical_kmeans(x[rows], self.num_codebooks, self.codebook_size, seed, self.backend)
            stats["fine_usage"] = [len(np.unique(fine[:, m])) / self.codebook_size for m in range(self.num_codebooks)]

        semantic = fine if coarse is None else np.concatenate([coarse[:, None], fine], axis=1)
        prefixes = [tuple(row) for row in semantic.tolist()]
        counters = unique_counters(prefixes)
        stats.update(distinct_semantic_ids=len(set(prefixes)), items_in_collisions=colliding_items(prefixes),
                     max_unique_token=max(counters))
        self.stats = stats
        log.info("CART identifiers: %s", json.dumps(stats))
        if workdir is not None:
            (workdir / "cart_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
        return self._table(items, coarse, 0 if coarse is None else len(centroids), fine, counters)

    def assign(self, items, embeddings: np.ndarray, ctx, table: IdTable) -> IdTable:
        """Identifiers of new items from the trained K-Means centroids and RQ-VAE in the identify artifact
        (`ctx.workdir`), their unique token continuing the table's counters, in `table`'s vocabulary: items added
        without retraining (issue 19).  The "w/o RQ-VAE" variant keeps no model of its fine codes: refused."""
        if not self.use_rqvae:
            raise GenretrError("identifier=cart with use_rqvae=false keeps no model of its fine codes: retrain to add "
                               "items")
        x = np.asarray(embeddings, dtype=np.float32)
        words = [[] for _ in items]
        if self.use_kmeans:
            centroids = np.load(Path(ctx.workdir) / "cart_centroids.npy")
            coarse = nearest_centroid(x, centroids)
            x = x - centroids[coarse]
            words = [[f"c{c}"] for c in coarse.tolist()]
        saved = torch.load(Path(ctx.workdir) / "rqvae.pt", map_location="cpu")
        model = RQVAE(**saved["hparams"])
        model.load_state_dict(saved["state_dict"])
        fine = model.encode(torch.from_numpy(x)).numpy()
        words = [w + [f"a{m + 1}_{v}" for m, v in enumerate(f)] for w, f in zip(words, fine.tolist())]
        counters = continued_counters(table, [tuple(w) for w in words])
        return in_vocabulary(table, [it.id for it in items], [w + [f"u{c}"] for w, c in zip(words, counters)], "CART")

    def _table(self, items, coarse, n_coarse: int, fine, counters) -> IdTable:
        vocab = list(SPECIAL_TOKENS) + [f"c{j}" for j in range(n_coarse)]
        vocab += [f"a{m + 1}_{v}" for m in range(self.num_codebooks) for v in range(self.codebook_size)]
        vocab += [f"u{i}" for i in range(max(counters) + 1)]
        index = {t: i for i, t in enumerate(vocab)}
        seqs = []
        for row, (f, u) in enumerate(zip(fine.tolist(), counters)):
            words = ([f"c{coarse[row]}"] if coarse is not None else []) + [f"a{m + 1}_{v}" for m, v in enumerate(f)]
            seqs.append([index[w] for w in words + [f"u{u}"]])
        return IdTable.from_lists([it.id for it in items], seqs, vocab,
                                  new_tokens=vocab[len(SPECIAL_TOKENS):])  # one token each in an MLLM
