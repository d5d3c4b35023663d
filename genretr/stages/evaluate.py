"""The evaluate stage (DESIGN.md): every task's queries searched in its pool, R@K and MRR@10 (and each
query's first-hit rank in the run dir's per_query.json, for genretr.report's paired tests).

`searcher` picks the method: the two-tower embedding search, or generative retrieval -- the trained
decoder under the pool's trie (`genretr.evaluation.search`), with GENIUS_R re-ranking, the atomic
classifier head, or SSID's identifier-then-rationale answers (`genretr.rationale`).  Queries may be
replaced by translations (`eval.query_texts`, SSID Table IV) and, with `train.describe`, GRACE Sec. 4.5's
descriptions are scored too.  Functions take the run's `RunContext` (its config, store and stage keys).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from genretr.artifacts import atomic_write_text
from genretr.data.schema import RetrievalDataset
from genretr.errors import GenretrError
from genretr.hardware import search_dtype
from genretr.identifiers.base import IdTable
from genretr.data.embeddings import Embeddings
from genretr.describe import caption_words

if TYPE_CHECKING:  # stages read the run's context; only genretr.pipeline makes one
    from genretr.stages.context import RunContext

log = logging.getLogger(__name__)


def translated_queries(ctx: RunContext, ds: RetrievalDataset, emb: Embeddings, queries):
    """eval.query_texts: the listed queries with their translated text, embedded by this run's encoder."""
    from genretr.evaluation.multilingual import load_query_texts, translated

    queries = translated(queries, load_query_texts(ctx.cfg.eval.query_texts))
    if not queries:
        return [], torch.zeros(0)
    if any(q.image is not None for q in queries):
        raise GenretrError(f"eval.query_texts={ctx.cfg.eval.query_texts}: translates text-only queries")
    need_vecs = ctx.reads_query_vectors()
    vecs = (ctx.embed_texts(ds, [q.text for q in queries]) if need_vecs  # token input / MLLM: z is unread
            else torch.zeros(len(queries), emb.query_vecs.shape[1]))
    return queries, vecs

def write_per_query(run_dir: Path, per_query: dict) -> None:
    """`per_query.json` in the run dir: task -> {"query_ids", "rank"}, rank the 1-based position of the first
    relevant item in the top_k ranking, 0 when none is (genretr.report's paired tests read it)."""
    from genretr.evaluation.distributed import rank_zero

    if rank_zero():
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(run_dir) / "per_query.json", json.dumps(per_query, separators=(",", ":")) + "\n")


def run(ctx: RunContext, ds: RetrievalDataset, emb: Embeddings, model=None, table=None, tries=None) -> dict:
    from genretr.evaluation.distributed import sharded
    from genretr.evaluation.metrics import first_hit_ranks, metrics_from_ranks

    split, out, per_query = ctx.cfg.eval.split, {}, {}
    for task in ctx.tasks():
        queries = ds.queries(split, task)
        if ctx.cfg.eval.get("max_queries"):
            queries = queries[: int(ctx.cfg.eval.max_queries)]
        vecs = None
        if ctx.cfg.eval.get("query_texts"):  # SSID Table IV: the same queries in another language
            queries, vecs = translated_queries(ctx, ds, emb, queries)
        if not queries:
            raise GenretrError(f"no {task} queries in split '{split}' of dataset {ds.name}"
                               + (f" listed in {ctx.cfg.eval.query_texts}" if vecs is not None else ""))
        qvecs = ctx.queries_of(ds, emb, queries, table, vecs)
        search = searcher(ctx, ds, emb, task, model, table, tries)
        rankings, qps = sharded(search, qvecs)
        ranks = first_hit_ranks(rankings, [q.relevant for q in queries])
        per_query[task] = {"query_ids": [q.id for q in queries], "rank": ranks.tolist()}
        out[task] = {**metrics_from_ranks(ranks), "queries": len(queries), "q_per_s": qps}
        log.info("%s %s: %s", ctx.cfg.method.name, task,
                 ", ".join(f"{k}={v:.4f}" for k, v in out[task].items() if k.startswith(("R@", "MRR"))))
    write_per_query(ctx.run_dir, per_query)
    if model is not None and ctx.cfg.train.get("describe", False):
        out["describe"] = describe_metrics(ctx, ds, emb, model, table)
    return out

def describe_metrics(ctx: RunContext, ds, emb: Embeddings, model, table: IdTable) -> dict:
    """GRACE Sec. 4.5: describe each test-pool image from its identifier; does the description
    retrieve that image (embedding model, over the same pool)?"""
    from genretr import describe
    from genretr.evaluation.embedding import embedding_search
    from genretr.evaluation.metrics import retrieval_metrics

    pool = ds.splits[ctx.cfg.eval.split].pools["t2i"]
    texts = describe.describe(model, table, ctx.query_vocab(ds, table), caption_words(ds), pool,
                              int(ctx.cfg.backbone.get("max_src_len", 32)), emb.item_vecs.shape[1])
    rankings, _ = embedding_search(ctx.embed_texts(ds, texts).numpy(), emb.items(pool).numpy(), pool,
                                   int(ctx.cfg.eval.top_k))
    metrics = {**retrieval_metrics(rankings, [(i,) for i in pool]), "queries": len(pool)}
    log.info("describe: e.g. %s -> %r; R@1=%.4f", pool[0], texts[0], metrics["R@1"])
    (ctx.run_dir / "descriptions.tsv").write_text("".join(f"{i}\t{t}\n" for i, t in zip(pool, texts)))
    return metrics

def searcher(ctx: RunContext, ds, emb: Embeddings, task: str, model, table, tries):
    """query batch -> (rankings, q/s): the two-tower search without a decoder (the embedding baseline), else
    the decoder's constrained search over the pool's trie (genretr.evaluation.search)."""
    from genretr.evaluation import search

    top_k, pool, decoder = int(ctx.cfg.eval.top_k), ctx.pool(ds, task), ctx.decoder()
    if decoder is None:
        return search.embedding_searcher(pool, emb.items(pool).numpy(), top_k)
    d = ctx.cfg.decoding
    # identifiers map to the pool's items only: an identifier shared with a train item (semantic IDs'
    # collisions) never returns that item, and a freely generated train identifier is a miss
    table = table.subset(pool)
    model = decoder.search_model(ctx, ds, model, table)
    return search.generative_searcher(model, tries[task], table, d, top_k, bool(ctx.cfg.progress),
                                      rerank_vecs=emb.items if d.get("rerank", False) else None,
                                      classifier_pool=table.subset(pool) if ctx.classifier_head() else None,
                                      step_dtype=search_dtype(ctx.cfg, model_device(model)))


def model_device(model) -> torch.device:
    params = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return params.device if params is not None else torch.device("cpu")
