"""The evaluate stage (DESIGN.md): every task's queries searched in its pool, R@K and MRR@10 (and each
query's first-hit rank in the run dir's per_query.json, for genretr.report's paired tests).

`searcher` picks the method: the two-tower embedding search, or generative retrieval -- the trained
decoder under the pool's trie (`genretr.evaluation.search`), with GENIUS_R re-ranking, the atomic
classifier head, or SSID's identifier-then-rationale answers (`genretr.rationale`).  Queries may be
replaced by translations (`eval.query_texts`, SSID Table IV) and, with `train.describe`, GRACE Sec. 4.5's
descriptions are scored too.  Functions take the `Pipeline` (its config, store and earlier stages).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from genretr.artifacts import atomic_write_text
from genretr.data.schema import RetrievalDataset
from genretr.errors import GenretrError
from genretr.hardware import search_dtype
from genretr.identifiers.base import IdTable
from genretr.pipeline import Embeddings, _describe_words

log = logging.getLogger("genretr.pipeline")


def translated_queries(p, ds: RetrievalDataset, emb: Embeddings, queries):
    """eval.query_texts: the listed queries with their translated text, embedded by this run's encoder."""
    from genretr.evaluation.multilingual import load_query_texts, translated

    queries = translated(queries, load_query_texts(p.cfg.eval.query_texts))
    if not queries:
        return [], torch.zeros(0)
    if any(q.image is not None for q in queries):
        raise GenretrError(f"eval.query_texts={p.cfg.eval.query_texts}: translates text-only queries")
    need_vecs = p.cfg.method.name == "embedding" or (not p._mllm() and p._input() != "tokens")
    vecs = (p.embed_texts(ds, [q.text for q in queries]) if need_vecs  # token input / MLLM: z is unread
            else torch.zeros(len(queries), emb.query_vecs.shape[1]))
    return queries, vecs

def write_per_query(run_dir: Path, per_query: dict) -> None:
    """`per_query.json` in the run dir: task -> {"query_ids", "rank"}, rank the 1-based position of the first
    relevant item in the top_k ranking, 0 when none is (genretr.report's paired tests read it)."""
    from genretr.evaluation.distributed import rank_zero

    if rank_zero():
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(run_dir) / "per_query.json", json.dumps(per_query, separators=(",", ":")) + "\n")


def evaluate(p, ds, emb: Embeddings, model=None, table=None, tries=None) -> dict:
    from genretr.evaluation.distributed import sharded
    from genretr.evaluation.metrics import first_hit_ranks, metrics_from_ranks

    split, out, per_query = p.cfg.eval.split, {}, {}
    for task in p.tasks():
        queries = ds.queries(split, task)
        if p.cfg.eval.get("max_queries"):
            queries = queries[: int(p.cfg.eval.max_queries)]
        vecs = None
        if p.cfg.eval.get("query_texts"):  # SSID Table IV: the same queries in another language
            queries, vecs = translated_queries(p, ds, emb, queries)
        if not queries:
            raise GenretrError(f"no {task} queries in split '{split}' of dataset {ds.name}"
                               + (f" listed in {p.cfg.eval.query_texts}" if vecs is not None else ""))
        qvecs = p.queries_of(ds, emb, queries, table, vecs)
        search = searcher(p, ds, emb, task, model, table, tries)
        rankings, qps = sharded(search, qvecs)
        ranks = first_hit_ranks(rankings, [q.relevant for q in queries])
        per_query[task] = {"query_ids": [q.id for q in queries], "rank": ranks.tolist()}
        out[task] = {**metrics_from_ranks(ranks), "queries": len(queries), "q_per_s": qps}
        log.info("%s %s: %s", p.cfg.method.name, task,
                 ", ".join(f"{k}={v:.4f}" for k, v in out[task].items() if k.startswith(("R@", "MRR"))))
    write_per_query(p.run_dir, per_query)
    if model is not None and p.cfg.train.get("describe", False):
        out["describe"] = describe_metrics(p, ds, emb, model, table)
    return out

def describe_metrics(p, ds, emb: Embeddings, model, table: IdTable) -> dict:
    """GRACE Sec. 4.5: describe each test-pool image from its identifier; does the description
    retrieve that image (embedding model, over the same pool)?"""
    from genretr import describe
    from genretr.evaluation.embedding import embedding_search
    from genretr.evaluation.metrics import retrieval_metrics

    pool = ds.splits[p.cfg.eval.split].pools["t2i"]
    texts = describe.describe(model, table, p._query_vocab(ds, table), _describe_words(ds), pool,
                              int(p.cfg.backbone.get("max_src_len", 32)), emb.item_vecs.shape[1])
    rankings, _ = embedding_search(p.embed_texts(ds, texts).numpy(), emb.items(pool).numpy(), pool,
                                   int(p.cfg.eval.top_k))
    metrics = {**retrieval_metrics(rankings, [(i,) for i in pool]), "queries": len(pool)}
    log.info("describe: e.g. %s -> %r; R@1=%.4f", pool[0], texts[0], metrics["R@1"])
    (p.run_dir / "descriptions.tsv").write_text("".join(f"{i}\t{t}\n" for i, t in zip(pool, texts)))
    return metrics

def searcher(p, ds, emb: Embeddings, task: str, model, table, tries):
    """query batch -> (rankings, q/s) for the configured method and decoding (genretr.evaluation.search)."""
    from genretr.evaluation import search

    top_k, pool = int(p.cfg.eval.top_k), p.pool(ds, task)
    if p.cfg.method.name == "embedding":
        return search.embedding_searcher(pool, emb.items(pool).numpy(), top_k)
    d = p.cfg.decoding
    # identifiers map to the pool's items only: an identifier shared with a train item (semantic IDs'
    # collisions) never returns that item, and a freely generated train identifier is a miss
    table = table.subset(pool)
    if not p._mllm() and p._reason() == "both":  # identifiers end where the model writes <reason>
        from genretr.rationale import AnswerWithReason

        if d.get("engine", "genretr") != "genretr":
            raise GenretrError("train.reason=both is decoded by decoding.engine=genretr only")
        model = AnswerWithReason(model, p._reason_vocab(ds, table).sep)
    return search.generative_searcher(model, tries[task], table, d, top_k, bool(p.cfg.progress),
                                      rerank_vecs=emb.items if d.get("rerank", False) else None,
                                      classifier_pool=table.subset(pool) if p._classifier_head() else None,
                                      step_dtype=search_dtype(p.cfg, model_device(model)))


def model_device(model) -> torch.device:
    params = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return params.device if params is not None else torch.device("cpu")



def task_rankings(p, task: str = "t2i"):
    """(dataset, queries, rankings) of one generative run's `task` on the eval split, every stage run or reused
    from the cache: what the analysis scripts under experiments/ bucket and compare."""
    ds = p.dataset()
    emb = p.encode(ds)
    table = p.identify(ds, emb)
    model, tries = p.train(ds, emb, table), p.index(ds, table)
    queries = ds.queries(p.cfg.eval.split, task)
    rankings, _ = searcher(p, ds, emb, task, model, table, tries)(p.queries_of(ds, emb, queries, table))
    return ds, queries, rankings
