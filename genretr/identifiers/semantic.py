"""GRACE's semantic identifier (Sec. 3.3): a caption of the image, as word tokens.

An item captioned in the training split uses one of its own captions (`train_caption: first`, or
`random`, seeded).  The test images' captions must stay unseen, so — as the paper does to avoid
the leak — a captioner (`genretr.captioner`, given as `ctx.fit_captioner`) is trained on the training items' (embedding,
captions) and writes their captions; `train_caption: generated` captions every image that way.
Text and image–text items (other tasks' candidates) use their own text.  The captioner is saved
under `<workdir>/captioner`.

Collisions.  GRACE adds no disambiguation step, and Sec. 4.2 blames semantic identifiers' errors
on "images [that] shared the same captions": identical captions stay one identifier shared by all
their items (`collisions: share`, the default; the trie maps it to all of them, ranked together).
`collisions: disambiguate` appends a counter token "#j" to the j-th item of each shared group.

Items added without retraining (issue 19, `assign`): a new item with a text takes its own text; an image is
captioned by the run's saved captioner (from its embedding, or its pixels under captioner=pixels).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from genretr.data.captioning import item_images, wants_pixels, words
from genretr.errors import GenretrError
from genretr.identifiers.base import SPECIAL_TOKENS, IdTable
from genretr.identifiers.common import (append_counters, check_embeddings, continued_groups, counter_tokens,
                                       in_vocabulary)
from genretr.identifiers.saved_captioner import saved_captioner

log = logging.getLogger(__name__)
TRAIN_CAPTIONS = ("first", "random", "generated")
COLLISIONS = ("share", "disambiguate")


class SemanticIdentifier:
    code_tree = True  # items sharing a code prefix are alike (caption words): results.html draws the tree

    def __init__(self, captioner: Mapping, train_caption: str = "first", collisions: str = "share", seed: int = 0,
                 batch_size: int = 256):
        """`captioner`: the captioner config (conf/captioner/*.yaml, `${captioner}` in the YAML)."""
        if train_caption not in TRAIN_CAPTIONS:
            raise GenretrError(f"identifier.train_caption={train_caption} is not one of {', '.join(TRAIN_CAPTIONS)}")
        if collisions not in COLLISIONS:
            raise GenretrError(f"identifier.collisions={collisions} is not one of {', '.join(COLLISIONS)}")
        self.captioner_cfg, self.train_caption, self.collisions = captioner, train_caption, collisions
        self.seed, self.batch_size = seed, batch_size

    def captions(self, items, x: np.ndarray, ctx) -> tuple[list[list[str]], list[str]]:
        """Each item's caption as words, and where it came from ("train", "text" or "captioner")."""
        known = ctx.item_captions
        rng = np.random.default_rng(self.seed)
        seqs: list[list[str] | None] = [None] * len(items)
        source = ["captioner"] * len(items)
        for i, it in enumerate(items):
            caps = known.get(it.id)
            if caps and self.train_caption != "generated":
                seqs[i] = words(caps[0] if self.train_caption == "first" else caps[int(rng.integers(len(caps)))])
                source[i] = "train"
            elif getattr(it, "text", None):
                seqs[i], source[i] = words(it.text), "text"
        todo = [i for i, s in enumerate(seqs) if s is None]
        if todo:
            captioned = [i for i, it in enumerate(items) if known.get(it.id)]
            if not captioned:
                raise GenretrError(f"semantic identifiers: {len(todo)} items need a generated caption, "
                                   "but no item has training captions to train the captioner on")
            if wants_pixels(self.captioner_cfg):  # captioner=pixels reads the images, not the embeddings
                need = sorted({*captioned, *todo})
                images = item_images(ctx.images, [items[i] for i in need], "semantic identifiers")
                x = np.zeros((len(items), *images.shape[1:]), np.uint8)
                x[need] = images
            if ctx.fit_captioner is None:
                raise GenretrError("semantic identifiers: the IdentifierContext has no fit_captioner to write the "
                                   f"captions of {len(todo)} items (the identify stage gives genretr.captioner's)")
            cap = ctx.fit_captioner(x[captioned], [list(known[items[i].id]) for i in captioned], self.captioner_cfg,
                                self.seed, bool(ctx.progress))
            cap.save(Path(ctx.workdir) / "captioner")
            for i, ws in zip(todo, cap.describe_words(x[todo], batch_size=self.batch_size)):
                seqs[i] = ws
        return seqs, source

    def build(self, items, embeddings, ctx) -> IdTable:
        x = check_embeddings(items, embeddings, "semantic")
        seqs, source = self.captions(items, x, ctx)
        log.info("semantic identifiers: %d training captions, %d own texts, %d generated", source.count("train"),
                 source.count("text"), source.count("captioner"))
        vocab = SPECIAL_TOKENS + sorted({w for s in seqs for w in s})
        new_tokens = []
        if self.collisions == "disambiguate":
            seqs = append_counters(seqs)
            new_tokens = counter_tokens(seqs)
            vocab += new_tokens
        index = {t: i for i, t in enumerate(vocab)}
        return IdTable.from_lists([it.id for it in items], [[index[t] for t in s] for s in seqs], vocab,
                                  new_tokens=new_tokens)

    def assign(self, items, embeddings: np.ndarray, ctx, table: IdTable) -> IdTable:
        """Identifiers of new items in `table`'s vocabulary (issue 19): an item's own text, else the caption the
        run's saved captioner (`captioner/` in the identify artifact, `ctx.workdir`) writes for its embedding
        (its image, `ctx.images`, under captioner=pixels);
        under `collisions: disambiguate` a caption already held takes the next counter of its group."""
        x = check_embeddings(items, embeddings, "semantic")
        seqs = [words(it.text) if getattr(it, "text", None) else None for it in items]
        todo = [i for i, s in enumerate(seqs) if s is None]
        if todo:
            captioner, inputs = saved_captioner(ctx, "captioner", items, todo, x, "semantic identifiers")
            for i, ws in zip(todo, captioner.describe_words(inputs, batch_size=self.batch_size)):
                seqs[i] = ws
        if self.collisions == "disambiguate":
            seqs = continued_groups(table, seqs)
        return in_vocabulary(table, [it.id for it in items], seqs, "semantic")
