"""The searchers `Pipeline.evaluate` runs: query batch -> (rankings, queries/s).

* embedding: faiss exact cosine over the task's pool (the two-tower baseline);
* generative: beam search with the genretr engine (default) or HF `generate`, trie-constrained or free
  (``decoding.constrained=false``: GRACE Table 2's "w/o constrained generation" -- a generated sequence
  that is no identifier of the pool is a miss at its rank, `genretr.decoding.engine.MISS`);
* classifier: GRACE's atomic identifiers read from a classifier head -- one decoder step, the pool's
  item tokens ranked by their logit (no beam search: an atomic identifier is one token);

What changes a generative search composes as a list of search add-ons (`SearchAddOn`, its contract written
once below), built by the evaluate stage in one function (`genretr.stages.evaluate.search_add_ons`):
free generation (`FreeGeneration`), GENIUS_R's re-ranking (`Rerank`, Sec. 4.4: the items behind the beams
re-sorted by cosine with the query embedding) and SSID's answer-with-reason (`ReasonAfterIdentifier`,
Sec. III-F).  The search loop never checks a feature.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from genretr.decoding import queries as Q
from genretr.errors import GenretrError
from genretr.identifiers.base import PAD, IdTable


def embedding_searcher(pool_ids: list[str], pool_vecs: np.ndarray, top_k: int, index: str = "flat", **options):
    """query vectors -> (rankings, q/s) over one faiss index of the pool (`genretr.evaluation.embedding`), built
    once (`index`: flat | ivf | hnsw; `options`: nlist, nprobe, hnsw_m, ef_search)."""
    from genretr.evaluation.embedding import build_index, search_index

    built = build_index(pool_vecs, index, **options)
    return lambda v: search_index(built, v["z"] if isinstance(v, dict) else v, pool_ids, top_k)


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


class SearchAddOn:
    """One change to a generative search.  Each hook's default leaves the search as it is:

    - ``model(model)``: the model the search runs (a wrapper of the trained decoder);
    - ``keep(k, beams)``: how many results per query the search returns before ``rankings`` (given the count
      the earlier add-ons asked for);
    - ``engine_options()``: keyword arguments of the genretr engine (`genretr.decoding.engine`);
    - ``rankings(rankings, queries, top_k)``: the final rankings from the search's (at most `top_k` each);
    - ``engines``: the `decoding.engine`s that can run it, ``option`` the setting that turned it on.
    """
    engines = ("genretr", "hf")
    option = ""

    def model(self, model):
        return model

    def keep(self, k: int, beams: int) -> int:
        return k

    def engine_options(self) -> dict:
        return {}

    def rankings(self, rankings: list[list[str]], queries, top_k: int) -> list[list[str]]:
        return rankings


class FreeGeneration(SearchAddOn):
    """GRACE Table 2's "w/o constrained generation": the beams ranked as generated; one that is no pool identifier
    (another split's image's, or no identifier at all: Sec. 4.3's two reasons) is a miss at its rank (`MISS`)."""
    engines, option = ("genretr",), "decoding.constrained=false"

    def engine_options(self):
        return {"constrained": False}


class Rerank(SearchAddOn):
    """GENIUS_R (Sec. 4.4): every beam's items re-sorted by cosine(query vector, item vector) in the encoder's space
    (the authors re-rank with CLIP-SF's vectors), then cut to top_k.  `item_vecs(ids) -> vectors`.  A free
    generation's misses have no vector: the items found are re-sorted without them."""
    option = "decoding.rerank=true"

    def __init__(self, item_vecs):
        self.item_vecs = item_vecs

    def keep(self, k, beams):
        return max(k, beams)

    def rankings(self, rankings, queries, top_k):
        from genretr.decoding.engine import MISS
        from genretr.decoding.queries import encoder_vectors
        from genretr.decoding.rerank import rerank

        found = [[i for i in r if i is not MISS] for r in rankings]
        return rerank(found, encoder_vectors(queries), self.item_vecs, top_k)


class ReasonAfterIdentifier(SearchAddOn):
    """SSID Sec. III-F with train.reason=both: an identifier ends where the decoder writes <reason> (`sep`)."""
    engines, option = ("genretr",), "train.reason=both"

    def __init__(self, sep: int):
        self.sep = sep

    def model(self, model):
        from genretr.rationale import AnswerWithReason

        return AnswerWithReason(model, self.sep)


def generative_searcher(model, trie, table: IdTable, decoding, top_k: int, progress: bool, add_ons=(),
                        classifier_pool: IdTable | None = None, step_dtype: str = "float32"):
    """`decoding` is the config's `decoding` node (its engine, beams, length penalty, batch size and compile flag;
    free generation and re-ranking come as `add_ons`, the `SearchAddOn`s, applied in order); `step_dtype`:
    the dtype of the genretr engine's model step (its scores stay fp32; the HF engine runs the model as it is)."""
    engine = decoding.get("engine", "genretr")
    beams, lp, bs = int(decoding.num_beams), float(decoding.length_penalty), int(decoding.batch_size)
    if engine not in ("genretr", "hf"):
        raise GenretrError(f"decoding.engine={engine} is not one of genretr, hf")
    k, options = top_k, {}
    for a in add_ons:
        if engine not in a.engines:
            raise GenretrError(f"{a.option} is decoded by decoding.engine={' or '.join(a.engines)} only")
        model, k = a.model(model), a.keep(k, beams)
        options.update(a.engine_options())
    if classifier_pool is not None:
        search = lambda v: classifier_search(model, v, classifier_pool, k, bs, step_dtype)
    elif engine == "genretr":
        from genretr.decoding.engine import constrained_beam_search

        search = lambda v: constrained_beam_search(model, v, trie, table, beams, k, lp, bs, progress=progress,
                                                   step_dtype=step_dtype, compile=bool(decoding.get("compile", False)),
                                                   **options)
    else:
        from genretr.decoding.hf import constrained_search

        search = lambda v: constrained_search(model, v, trie, table, beams, bs, lp, k, progress)
    if not add_ons:
        return search

    def search_with_add_ons(v):
        t0 = time.perf_counter()
        rankings, _ = search(v)
        for a in add_ons:
            rankings = a.rankings(rankings, v, top_k)
        return rankings, Q.count(v) / max(time.perf_counter() - t0, 1e-9)

    return search_with_add_ons
