"""The searchers `Pipeline.evaluate` runs: query batch -> (rankings, queries/s).

* embedding: faiss exact cosine over the task's pool (the two-tower baseline);
* generative: beam search with the genretr engine (default) or HF `generate`, trie-constrained or free
  (``decoding.constrained=false``: GRACE Table 2's "w/o constrained generation" -- generated sequences
  that are not identifiers of the pool map to no item, i.e. a miss);
* classifier: GRACE's atomic identifiers read from a classifier head -- one decoder step, the pool's
  item tokens ranked by their logit (no beam search: an atomic identifier is one token);
* ``decoding.rerank=true`` (GENIUS_R, Sec. 4.4): the items behind the beams re-sorted by cosine with the
  query embedding.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from genretr.decoding import queries as Q
from genretr.errors import GenretrError
from genretr.identifiers.base import PAD, IdTable


def embedding_searcher(pool_ids: list[str], pool_vecs: np.ndarray, top_k: int):
    from genretr.evaluation.embedding import embedding_search

    return lambda v: embedding_search(v["z"] if isinstance(v, dict) else v, pool_vecs, pool_ids, top_k)


@torch.no_grad()
def classifier_search(model, queries, pool: IdTable, top_k: int, batch_size: int = 256, step_dtype="float32"):
    """Atomic identifiers through a classifier head: the first decoding step's logits over the pool's tokens
    (the step in `step_dtype`, its logits ranked in fp32)."""
    from genretr.decoding.engine import step_decoder_of

    t0 = time.perf_counter()
    model.eval()
    sd = step_decoder_of(model, step_dtype)
    tokens = torch.as_tensor(pool.sequences[:, 0], dtype=torch.long, device=sd.device)
    rankings = []
    for s in range(0, Q.count(queries), batch_size):
        q = Q.to_device(Q.take(queries, s, s + batch_size), sd.device)
        n = Q.count(q)
        logits = sd.step(torch.full((n,), PAD, dtype=torch.long, device=sd.device), 0, n, 1, sd.prepare(q),
                         sd.new_cache(n, 1), 1)
        top = logits[:, tokens].float().topk(min(top_k, len(tokens)), dim=1).indices.cpu().tolist()
        rankings += [[pool.item_ids[j] for j in row] for row in top]
    return rankings, Q.count(queries) / max(time.perf_counter() - t0, 1e-9)


def generative_searcher(model, trie, table: IdTable, decoding, top_k: int, progress: bool, rerank_vecs=None,
                        classifier_pool: IdTable | None = None, step_dtype: str = "float32"):
    """`decoding` is the config's `decoding` node; `rerank_vecs(ids) -> vectors` enables GENIUS_R; `step_dtype`:
    the dtype of the genretr engine's model step (its scores stay fp32; the HF engine runs the model as it is)."""
    engine, constrained = decoding.get("engine", "genretr"), bool(decoding.get("constrained", True))
    beams, lp, bs = int(decoding.num_beams), float(decoding.length_penalty), int(decoding.batch_size)
    # GENIUS_R re-ranks the items behind all beams, so the beams are cut to top_k only afterwards
    k = max(top_k, beams) if rerank_vecs is not None else top_k
    if classifier_pool is not None:
        search = lambda v: classifier_search(model, v, classifier_pool, k, bs, step_dtype)
    elif engine == "genretr":
        from genretr.decoding.engine import constrained_beam_search

        search = lambda v: constrained_beam_search(model, v, trie, table, beams, k, lp, bs, constrained=constrained,
                                                   progress=progress, step_dtype=step_dtype,
                                                   compile=bool(decoding.get("compile", False)))
    elif engine == "hf":
        if not constrained:
            raise GenretrError("decoding.constrained=false is implemented by decoding.engine=genretr only")
        from genretr.decoding.hf import constrained_search

        search = lambda v: constrained_search(model, v, trie, table, beams, bs, lp, k, progress)
    else:
        raise GenretrError(f"decoding.engine={engine} is not one of genretr, hf")
    if rerank_vecs is None:
        return search

    def search_and_rerank(v):
        from genretr.decoding.rerank import rerank

        t0 = time.perf_counter()
        rankings, _ = search(v)
        z = v["z"] if isinstance(v, dict) else v
        rankings = rerank(rankings, z, rerank_vecs, top_k)
        return rankings, Q.count(v) / max(time.perf_counter() - t0, 1e-9)

    return search_and_rerank
