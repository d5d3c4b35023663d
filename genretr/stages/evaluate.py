"""The evaluate stage (DESIGN.md): every task's queries searched in its pool, R@K and MRR@10 (and each
query's first-hit rank in the run dir's per_query.json, for genretr.report's paired tests; the first
`eval.page_queries` of each task, their hits scored, in results.html: genretr.evaluation.page).

`searcher` picks the method: the two-tower embedding search, or generative retrieval -- the trained
decoder under the pool's trie (`genretr.evaluation.search`), with GENIUS_R re-ranking, the atomic
classifier head, or SSID's identifier-then-rationale answers (`search_add_ons`).  Queries may be
replaced and results added by the run's add-ons (`genretr.stages.addons`: SSID Table IV's translated queries,
GRACE Sec. 4.5's descriptions).  Functions take the run's `RunContext` (its config, store and stage keys).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from genretr.artifacts import atomic_write_text
from genretr.decoding import queries as Q
from genretr.data.schema import RetrievalDataset
from genretr.errors import GenretrError
from genretr.hardware import search_dtype
from genretr.data.embeddings import Embeddings

if TYPE_CHECKING:  # stages read the run's context; only genretr.pipeline makes one
    from genretr.stages.context import RunContext

log = logging.getLogger(__name__)


def write_per_query(run_dir: Path, per_query: dict) -> None:
    """`per_query.json` in the run dir: task -> {"query_ids", "rank"}, rank the 1-based position of the first
    relevant item in the top_k ranking, 0 when none is (genretr.report's paired tests read it)."""
    from genretr.evaluation.distributed import rank_zero

    if rank_zero():
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(run_dir) / "per_query.json", json.dumps(per_query, separators=(",", ":")) + "\n")


def run(ctx: RunContext, ds: RetrievalDataset, emb: Embeddings, model=None, table=None, tries=None) -> dict:
    from genretr.evaluation.distributed import rank_zero, sharded
    from genretr.evaluation.metrics import first_hit_ranks, metrics_from_ranks

    split, out, per_query, samples = ctx.cfg.eval.split, {}, {}, {}
    shown = int(ctx.cfg.eval.get("page_queries", 0) or 0)
    for task in ctx.tasks():
        queries = ds.queries(split, task)
        if ctx.cfg.eval.get("max_queries"):
            queries = queries[: int(ctx.cfg.eval.max_queries)]
        if not queries:
            raise GenretrError(f"no {task} queries in split '{split}' of dataset {ds.name}")
        queries, vecs = ctx.add_ons().queries(ctx, ds, emb, queries)  # e.g. SSID Table IV's translations
        qvecs = ctx.queries_of(ds, emb, queries, table, vecs)
        search = searcher(ctx, ds, emb, task, model, table, tries)
        rankings, qps = sharded(search, qvecs)
        ranks = first_hit_ranks(rankings, [q.relevant for q in queries])
        per_query[task] = {"query_ids": [q.id for q in queries], "rank": ranks.tolist()}
        if shown and rank_zero():
            samples[task] = list(zip(queries[:shown], hits(ctx, ds, emb, queries[:shown], Q.take(qvecs, 0, shown),
                                                           rankings[:shown], model, table)))
        out[task] = {**metrics_from_ranks(ranks), "queries": len(queries), "q_per_s": qps}
        log.info("%s %s: %s", ctx.cfg.method.name, task,
                 ", ".join(f"{k}={v:.4f}" for k, v in out[task].items() if k.startswith(("R@", "MRR"))))
    write_per_query(ctx.run_dir, per_query)
    if model is not None:
        out.update(ctx.add_ons().metrics(ctx, ds, emb, model, table))  # e.g. GRACE Sec. 4.5's descriptions
    if shown and rank_zero():
        write_page(ctx, ds, out, samples, table)
    return out


def hits(ctx: RunContext, ds: RetrievalDataset, emb: Embeddings, queries, query_inputs, rankings, model=None,
         table=None):
    """`rankings` of `queries` as scored `Hit`s (genretr.evaluation.hits), scored as the search ranked them
    (`score_name`): the embedding baseline's and GENIUS_R's cosines, the classifier head's first-token log p,
    else the identifier's log p under the decoder as the search's add-ons present it (SSID's answer-with-reason)."""
    from genretr.evaluation.hits import scored_hits

    relevant = [q.relevant for q in queries]
    name = score_name(ctx, table)
    if name == "cosine":
        return scored_hits(rankings, relevant, query_inputs, item_vecs=emb.items, table=table)
    for add_on in search_add_ons(ctx, ds, emb, table):
        model = add_on.model(model)
    return scored_hits(rankings, relevant, query_inputs, model=model, table=table,
                       length_penalty=float(ctx.cfg.decoding.length_penalty),
                       step_dtype=search_dtype(ctx.cfg, model_device(model)), first_token=ctx.classifier_head())


def score_name(ctx: RunContext, table) -> str:
    if table is None or bool(ctx.cfg.decoding.get("rerank", False)):
        return "cosine"
    return "log p(first token)" if ctx.classifier_head() else "log p"


def write_page(ctx: RunContext, ds: RetrievalDataset, metrics: dict, samples: dict, table=None) -> Path:
    """`results.html` in the run dir (genretr.evaluation.page); the code tree for schemes that declare one."""
    from hydra.utils import get_class

    from genretr.evaluation import page

    scheme = ctx.cfg.get("identifier", {}).get("_target_") if table is not None else None
    tree = bool(scheme) and bool(getattr(get_class(scheme), "code_tree", False))
    name = ctx.cfg.method.name + (f" / {scheme.rsplit('.', 1)[-1]}" if scheme else "")
    html = page.render(ds, f"genretr: {name} on {ds.name} ({ctx.run_dir.name})", metrics, samples,
                       score_name(ctx, table), table, tree)
    path = Path(ctx.run_dir) / "results.html"
    page.write(path, html)
    return path


def searcher(ctx: RunContext, ds, emb: Embeddings, task: str, model, table, tries):
    """query batch -> (rankings, q/s): the two-tower search without a decoder (the embedding baseline), else
    the decoder's constrained search over the pool's trie (genretr.evaluation.search)."""
    from genretr.evaluation import search

    top_k, pool, decoder = int(ctx.cfg.eval.top_k), ctx.pool(ds, task), ctx.decoder()
    if decoder is None:
        return search.embedding_searcher(pool, emb.items(pool).numpy(), top_k, str(ctx.cfg.eval.get("index", "flat")),
                                         **dict(ctx.cfg.eval.get("index_options") or {}))
    # identifiers map to the pool's items only: an identifier shared with a train item (semantic IDs'
    # collisions) never returns that item, and a freely generated train identifier is a miss
    table = table.subset(pool)
    return search.generative_searcher(model, tries[task], table, ctx.cfg.decoding, top_k, bool(ctx.cfg.progress),
                                      add_ons=search_add_ons(ctx, ds, emb, table),
                                      classifier_pool=table if ctx.classifier_head() else None,
                                      step_dtype=search_dtype(ctx.cfg, model_device(model)))


def search_add_ons(ctx: RunContext, ds, emb: Embeddings, table) -> list:
    """The run's search add-ons in the order they apply (`genretr.evaluation.search.SearchAddOn`): the decoder
    adapter's own (SSID's answer-with-reason), free generation, GENIUS_R's re-ranking."""
    from genretr.evaluation import search

    d = ctx.cfg.decoding
    out = list(ctx.decoder().search_add_ons(ctx, ds, table))
    if not bool(d.get("constrained", True)):
        out.append(search.FreeGeneration())
    if bool(d.get("rerank", False)):
        out.append(search.Rerank(emb.items))
    return out


def model_device(model) -> torch.device:
    params = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return params.device if params is not None else torch.device("cpu")
