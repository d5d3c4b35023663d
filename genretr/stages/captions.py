"""Captioner-written queries (GRACE Appendix A pseudo-queries; CART Sec. 3.3 caption enhancement).

A captioner (`genretr.captioner`) is trained on the train split's (image embedding, caption) pairs, then
writes captions for pool items; they are embedded by the run's own encoder like real queries (when the
decoder reads query vectors) and added to the decoder's training samples.  GRACE writes them for the images
that have no training query (the test pool); CART for every item (`every_item=True`).  The captions are a cached stage artifact.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from genretr.data.captioning import train_captions
from genretr.stages import keys
from genretr.samples import PseudoQueries

if TYPE_CHECKING:  # stages read the run's context; only genretr.pipeline makes one
    from genretr.stages.context import RunContext

log = logging.getLogger(__name__)


def captions_for(ctx: RunContext, ds, emb, item_ids: list[str], every_item: bool = False) -> dict[str, str]:
    """{item id: written caption} for `item_ids` without a training caption (or all of them with every_item)."""
    return json.loads((captions_artifact(ctx, ds, emb, item_ids, every_item) / "captions.json").read_text())


def captions_artifact(ctx: RunContext, ds, emb, item_ids: list[str], every_item: bool = False) -> Path:
    """The captions stage's artifact for `item_ids` (`captions_for`): ``captions.json`` and the trained
    ``captioner/``."""
    from genretr.captioner import fit_captioner
    from genretr.data.captioning import item_images, wants_pixels

    cfg = ctx.cfg
    have = train_captions(ds)
    todo = [i for i in item_ids if every_item or i not in have]
    key = keys.captions(ctx, todo)

    pixels = wants_pixels(cfg.captioner)

    def inputs(ids):  # what the captioner reads: item vectors, or the items' images (captioner=pixels)
        return item_images(ds.images, [ds.items[i] for i in ids], ds.name) if pixels else emb.items(ids).numpy()

    def write(tmp: Path):
        train = sorted(have)
        cap = fit_captioner(inputs(train), [have[i] for i in train], cfg.captioner, int(cfg.seed), bool(cfg.progress),
                            device=ctx.device)
        cap.save(tmp / "captioner")
        texts = cap.describe(inputs(todo)) if todo else []
        (tmp / "captions.json").write_text(json.dumps(dict(zip(todo, texts))))

    return ctx.store.produce("captions", key, write)


def pseudo_queries(ctx: RunContext, ds, emb, table, every_item: bool = False) -> PseudoQueries:
    written = captions_for(ctx, ds, emb, list(table.item_ids), every_item)
    empty = [i for i, text in written.items() if not text.strip()]
    if empty:  # an under-trained captioner may end a caption at once: no query to learn from
        log.warning("pseudo-queries: %d of %d written captions are empty and left out (e.g. item %s)",
                    len(empty), len(written), empty[0])
    written = {i: text for i, text in written.items() if text.strip()}
    ids = list(written)
    texts = [written[i] for i in ids]
    if texts and ctx.reads_query_vectors():
        vecs = ctx.embed_texts(ds, texts)
    else:  # nothing reads a written query's vector (a token-input decoder, e.g. CART on given ImageBind features)
        vecs = torch.zeros(len(texts), emb.item_vecs.shape[1])
    log.info("pseudo-queries: %d written, e.g. %s", len(ids), texts[:2])
    return PseudoQueries(texts, vecs, ids)
