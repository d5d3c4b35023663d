"""The identify stage (DESIGN.md): the configured identifier scheme (`genretr.identifiers`) gives every item
in the run's pools an identifier, learning from the items' vectors and what `IdentifierContext` offers."""
from __future__ import annotations

import functools
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from genretr.data.embeddings import Embeddings
from genretr.data.captioning import train_caption_texts, train_captions
from genretr.data.schema import RetrievalDataset, pool_items, query_side
from genretr.identifiers.base import DESCRIBER_DIR, IdentifierContext, IdTable, LazyRows
from genretr.stages import keys
from genretr.stages.captions import captions_artifact

if TYPE_CHECKING:  # stages read the run's context; only genretr.pipeline makes one
    from genretr.stages.context import RunContext

log = logging.getLogger(__name__)


def run(ctx: RunContext, ds: RetrievalDataset, emb: Embeddings, make_context=None) -> IdTable:
    """The run's IdTable (from the cache when made before).  `make_context(ds, emb, items, workdir)` builds
    the scheme's `IdentifierContext` (default: `scheme_context` over `ctx`; experiments/ swap in their own)."""
    key = ctx.keys["identify"] = keys.identify(ctx)
    items = pool_items(ds, ctx.splits(), [*ctx.tasks(), "universal"])

    make = make_context or (lambda *args: scheme_context(ctx, *args))

    def write(tmp: Path):
        scheme = ctx.identifier_scheme()
        table = scheme.build([ds.items[i] for i in items], emb.items(items).numpy(), make(ds, emb, items, tmp))
        table.save(tmp)
        (tmp / "examples.txt").write_text("".join(f"{i}\t{table.text(i)}\n" for i in items[:50]))

    table = IdTable.load(ctx.store.produce("identify", key, write))
    log.info("identifiers: %d items, vocab %d, %d items in collisions", len(table), table.vocab_size,
             table.collisions())
    return table


def scheme_context(ctx: RunContext, ds: RetrievalDataset, emb: Embeddings, items: list[str],
                   workdir: Path) -> IdentifierContext:
    from genretr.captioner import fit_captioner  # lazily: imports Lightning

    captions = train_captions(ds)
    tasks = set(ctx.tasks())  # GENIUS's quantizer learns from the pairs of the tasks the run trains and tests
    pairs = [(q, r) for q in ds.splits["train"].queries if q.task in tasks for r in q.relevant]

    def describe(item_ids: list[str]) -> list[str]:
        """Captions written by the run's captioner; the captioner is kept beside the identifiers (``describer/``)
        so that items added later (`genretr.add`) are described by the same one."""
        art = captions_artifact(ctx, ds, emb, list(item_ids), every_item=True)
        if not (Path(workdir) / DESCRIBER_DIR).exists():  # one captioner: trained on the train split, whatever ids
            shutil.copytree(art / "captioner", Path(workdir) / DESCRIBER_DIR)
        written = json.loads((art / "captions.json").read_text())
        return [written[i] for i in item_ids]

    return IdentifierContext(
        train_texts=train_caption_texts(ds), workdir=workdir,
        seed=int(ctx.cfg.seed), progress=bool(ctx.cfg.progress), item_captions=captions,
        train_query_vecs=(LazyRows(lambda: emb.queries([q.id for q, _ in pairs]).numpy(), len(pairs)) if pairs
                          else np.zeros((0, 1))),
        train_query_items=[r for _, r in pairs], train_query_tasks=[q.task for q, _ in pairs],
        train_query_ids=[q.id for q, _ in pairs],
        train_query_sides=[query_side(q, ctx.instructions()) for q, _ in pairs],
        pair_parts=lambda sides: ctx.pair_parts(ds, emb, sides),
        item_modalities=[ds.items[i].modality for i in items], describe=describe, images=ds.images,
        fit_captioner=functools.partial(fit_captioner, device=ctx.device), device=ctx.device,
        cache_dir=ctx.store.work("identify-cache", keys.identify_cache(ctx)))
