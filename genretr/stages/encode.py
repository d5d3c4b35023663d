"""The encode stage (DESIGN.md): the dual encoder trained, then every item and query of the run's splits embedded.

Two training settings, picked by ``encoder.fit.tasks``:

- ``captions`` (default; GRACE, CART, SSID): (image, caption) pairs of the train split's caption → item
  queries, one caption per image an epoch.
- ``all`` (GENIUS Sec. 4.1, UniIR's instruction-tuned CLIP-SF): every train query of every task paired
  with each of its relevant items, so the encoder learns all eight M-BEIR tasks at once.

With ``encoder.instructions=true`` a query is embedded with its task's instruction prepended to its
text (GENIUS Sec. 4.2.2; an image-only query fuses its image with the instruction's embedding), so two
queries with the same words but different target modalities (t→i, t→(i,t), t→t) embed apart — what a
universal pool (GENIUS Table 2) needs.  Items are embedded without instructions.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from hydra.utils import instantiate

from genretr.data.datamodules import CaptionPairs, ContrastiveDataModule, QueryTargetPairs
from genretr.data.embeddings import Embeddings, TowerParts
from genretr.data.mapped import row_blocks
from genretr.data.schema import CAPTION_TASKS, Query, RetrievalDataset, query_side, query_text
from genretr.errors import GenretrError
from genretr.hardware import release_freed_memory
from genretr.stages import keys
from genretr.training import fit

if TYPE_CHECKING:  # stages read the run's context; only genretr.pipeline makes one
    from genretr.stages.context import RunContext

log = logging.getLogger(__name__)


def split_members(ds: RetrievalDataset, splits):
    """Items in the pools of `splits` or relevant to their queries, and those queries."""
    queries = [q for s in splits for q in ds.splits[s].queries]
    ids = {i for s in splits for pool in ds.splits[s].pools.values() for i in pool}
    ids |= {r for q in queries for r in q.relevant}
    return [x for x in ds.items.values() if x.id in ids], queries


def caption_groups(ds: RetrievalDataset):
    """Training images and, for each, its captions: from the train split's caption queries (t2i: caption ->
    image), then from its image -> caption queries (i2t: the relevant captions of the query image, each caption
    once), so that a dataset of i2t queries alone trains the encoder too."""
    groups: dict[int, list[str]] = {}
    for q in ds.splits["train"].queries:
        if q.task in CAPTION_TASKS and q.text:
            groups.setdefault(ds.items[q.relevant[0]].image, []).append(q.text)
    for q in ds.splits["train"].queries:
        if q.task == "i2t" and q.image is not None:
            captions = groups.setdefault(q.image, [])
            captions += [t for r in q.relevant if (t := ds.items[r].text) and t not in captions]
    groups = {image: captions for image, captions in groups.items() if captions}
    index = np.array(sorted(groups), dtype=np.int64)
    return index, [groups[i] for i in index]


def query_target_sides(ds: RetrievalDataset, instructions: bool):
    """(query side, target side, query id, target id) of every train (query, relevant item) pair; a side
    is (image index or None, text or None)."""
    out = []
    for q in ds.splits["train"].queries:
        qside = query_side(q, instructions)
        for r in q.relevant:
            x = ds.items[r]
            out.append((qside, (x.image, x.text or None), q.id, r))
    return out


BLOCK_ROWS = 65536  # rows gathered (and fused) at a time when the vectors are assembled


@torch.no_grad()
def embed(encoder, ds: RetrievalDataset, items, queries, texts, text_inputs, batch_size: int,
          instructions: bool = False, device="cpu"):
    """(item vectors, query vectors, `TowerParts`) on the CPU, each batch embedded on `device`; images are embedded
    once each, texts once each, and every row written into one preallocated tensor (no per-row copies at scale).
    The parts are the towers' vectors of the images and texts of the rows that fuse both, kept unfused.
    `text_inputs` (the text tower's inputs of `texts`) handed over in a one-element list is emptied, so that
    the inputs are freed once the texts are embedded."""
    encoder.to(device).eval()

    def batches(fn, blocks, n):
        out, s = None, 0
        for block in blocks:
            v = fn(torch.as_tensor(block).to(device)).float().cpu()
            out = v.new_empty(n, v.shape[1]) if out is None else out
            out[s:s + len(v)] = v
            s += len(v)
        return out

    # the images read from the dataset's file a batch at a time: a pass over them leaves none resident
    img = batches(encoder.embed_images, row_blocks(ds.images, batch_size), len(ds.images))
    if isinstance(text_inputs, list):  # handed over in a one-element list: freed once embedded
        text_inputs = text_inputs.pop()
    txt = batches(encoder.embed_texts, (text_inputs[s:s + batch_size] for s in range(0, len(texts), batch_size)),
                  len(texts))
    del text_inputs
    release_freed_memory()
    row = {t: i for i, t in enumerate(texts)}
    fused_images, fused_texts = set(), set()  # of the rows that fuse an image and a text

    def vectors(sides, owners, what: str) -> torch.Tensor:
        """One row per (image index or None, text or None): the image's, the text's, or both fused; written a
        block of rows at a time (no full-size temporaries)."""
        image_rows = torch.tensor([-1 if i is None else i for i, _ in sides], dtype=torch.long)
        text_rows = torch.tensor([row[t] if t else -1 for _, t in sides], dtype=torch.long)
        has_image, has_text = image_rows >= 0, text_rows >= 0
        empty = (~has_image & ~has_text).nonzero()
        if len(empty):
            raise GenretrError(f"encode: {what} {owners[int(empty[0])].id!r} has neither an image nor a text to embed")
        out = (img if img is not None else txt).new_empty(len(sides), (img if img is not None else txt).shape[1])
        for kind, mask in (("image", has_image & ~has_text), ("text", has_text & ~has_image),
                           ("both", has_image & has_text)):
            rows = mask.nonzero().squeeze(1)
            for s in range(0, len(rows), BLOCK_ROWS):
                b = rows[s:s + BLOCK_ROWS]
                if kind == "image":
                    out[b] = img[image_rows[b]]
                elif kind == "text":
                    out[b] = txt[text_rows[b]]
                else:
                    out[b] = encoder.fuse(img[image_rows[b]], txt[text_rows[b]])
                    fused_images.update(image_rows[b].tolist())
                    fused_texts.update(text_rows[b].tolist())
        return out

    item_vecs = vectors([(x.image, x.text) for x in items], items, "item")
    query_vecs = vectors([query_side(q, instructions) for q in queries], queries, "query")
    images_kept, texts_kept = sorted(fused_images), sorted(fused_texts)
    empty = torch.zeros(0, item_vecs.shape[1])
    parts = TowerParts(images_kept, img[images_kept] if images_kept else empty,  # indexing copies the rows
                       [texts[r] for r in texts_kept], txt[texts_kept] if texts_kept else empty)
    return item_vecs, query_vecs, parts


def prepare_texts(encoder, texts: list[str], fit_texts: list[str], store=None, device="cpu") -> torch.Tensor:
    """The text tower's inputs for `texts`.  A tower whose preparation depends on the texts alone
    (``fixed_preparation``: frozen MiniLM features) computes them once, on `device`: they are kept in `store` (an
    `ArtifactStore`, stage ``text-features``, keyed by the tower, its code, its dtype on `device` and the texts)
    and reused by every seed and every run over the same texts.  Such a tower's ``prepare(texts, fit_texts,
    shard_dir=…, device=…)`` writes its work in shards under the stage's work dir, so that a killed run
    restarted with the same command resumes the featurisation where it stopped."""
    tower = encoder.text_tower
    if store is None or not getattr(tower, "fixed_preparation", False):
        return encoder.prepare_texts(texts, fit_texts)
    digest = hashlib.sha1("\n".join(texts).encode()).hexdigest()
    key = keys.text_features(tower, digest, device)

    def write(tmp: Path):
        features = tower.prepare(texts, fit_texts, shard_dir=store.work("text-features", key), device=device)
        torch.save(features, tmp / "features.pt")

    return torch.load(store.produce("text-features", key, write) / "features.pt")


def fit_and_embed(cfg, ds: RetrievalDataset, splits, seed: int, instructions: bool, all_tasks: bool, fit,
                  store=None, device="cpu", workers: int = 0):
    """The encode stage's work (`cfg`: the encoder node): the dual encoder trained with ``fit(encoder,
    datamodule)`` when ``cfg.fit.max_epochs > 0`` (`workers` loader processes reading the pairs), then every
    member of `splits` embedded on `device`.  `store` keeps fixed text features across runs (`prepare_texts`).
    Returns (encoder, items, queries, item vectors, query vectors, `TowerParts`)."""
    torch.manual_seed(seed)
    encoder = instantiate(cfg.model)
    items, queries = split_members(ds, splits)
    sides = query_target_sides(ds, instructions) if all_tasks else []
    texts = sorted({x.text for x in items if x.text} | {t for q in queries if (t := query_text(q, instructions))}
                   | {s[1] for pair in sides for s in pair[:2] if s[1]})
    row = {t: i for i, t in enumerate(texts)}
    image_index, train_caps = caption_groups(ds)
    text_inputs = prepare_texts(encoder, texts, [c for cs in train_caps for c in cs], store, device)
    if int(cfg.fit.max_epochs) > 0 and not encoder.trains_embeddings():
        log.warning("encoder: both towers are frozen, so training would move only the temperature, which changes "
                    "no ranking: encoder.fit.max_epochs=%s skipped (unfreeze a tower to fine-tune)", cfg.fit.max_epochs)
    elif int(cfg.fit.max_epochs) > 0:
        pairs = None
        if all_tasks:
            pairs = QueryTargetPairs(ds.images, sides, text_inputs, row)
        else:
            pairs = CaptionPairs(ds.images, image_index, [[row[c] for c in cs] for cs in train_caps], text_inputs)
        if len(pairs) == 0:
            raise GenretrError("encoder: no training pairs: the train split has no caption -> image (t2i, t2a, t2v) "
                               "or image -> caption (i2t) queries; encoder.fit.tasks=all trains on every task's "
                               "pairs, encoder.fit.max_epochs=0 embeds without training")
        log.info("encoder: %d training pairs (%s)", len(pairs), "every task" if all_tasks else "captions")
        fit(encoder, ContrastiveDataModule(pairs, int(cfg.fit.batch_size), seed, workers))  # leaves no trainer on it
        del pairs
        release_freed_memory()  # the trainer's reference cycles (they hold the pairs) and its freed activations
    inputs = [text_inputs]  # embed() frees the text features once the texts are embedded (1M captions: 1.5 GB)
    del text_inputs
    item_vecs, query_vecs, parts = embed(encoder, ds, items, queries, texts, inputs, int(cfg.fit.batch_size),
                                         instructions, device)
    return encoder, items, queries, item_vecs, query_vecs, parts


def run(ctx: RunContext, ds: RetrievalDataset) -> Embeddings:
    """The run's embeddings (from the cache when made before): trained and embedded, or the dataset's own."""
    cfg = ctx.cfg.encoder
    splits = ctx.splits()
    given = getattr(ds, "item_vectors", None) is not None
    # given item vectors without query vectors: the zero query vectors exist for token-input backbones only
    mode = ctx.reads_query_vectors() if given and ds.query_vectors is None else None
    key = ctx.keys["encode"] = keys.encode(ctx, splits, mode)

    def write(tmp: Path):
        if given:  # features given (dataset=precomputed): nothing to encode
            given_vectors(ctx, ds, splits).save(tmp)
            return
        encoder, items, queries, item_vecs, query_vecs, parts = fit_and_embed(
            cfg, ds, splits, int(ctx.cfg.seed), ctx.instructions(), encoder_tasks(cfg) == "all",
            lambda enc, dm: fit(enc, dm, ctx.cfg, ctx.store.work("encode", key), int(cfg.fit.max_epochs),
                                ctx.logger, ctx.extra_callbacks), ctx.store, ctx.device,
            int(ctx.cfg.get("loader_workers", 0)))
        emb = Embeddings([x.id for x in items], item_vecs, [q.id for q in queries], query_vecs, parts)
        emb.save(tmp)
        torch.save(encoder.cpu().state_dict(), tmp / "encoder.pt")
        if getattr(encoder.text_tower, "tokenizer", None) is not None:
            encoder.text_tower.tokenizer.save(str(tmp / "tokenizer.json"))

    path = ctx.store.produce("encode", key, write)
    return Embeddings.load(path)


def encoder_tasks(cfg) -> str:
    """encoder.fit.tasks: captions | all."""
    tasks = str(cfg.fit.tasks)
    if tasks not in ("captions", "all"):
        raise GenretrError(f"encoder.fit.tasks={tasks} is not one of captions, all")
    return tasks


def given_vectors(ctx: RunContext, ds: RetrievalDataset, splits) -> Embeddings:
    """Embeddings of a dataset that ships its vectors (CART's ImageBind features): items from
    `item_vectors`; queries from `query_vectors` (the same model's text side), or -- for backbones
    that read query tokens and never the query vector -- zeros."""
    items, queries = split_members(ds, splits)
    vecs = torch.from_numpy(np.stack([ds.item_vectors[x.id] for x in items])).float()
    if ds.query_vectors is not None:
        qvecs = torch.from_numpy(np.stack([ds.query_vectors[q.id] for q in queries])).float()
    elif not ctx.reads_query_vectors():
        qvecs = torch.zeros(len(queries), vecs.shape[1])
    else:
        raise GenretrError(f"dataset {ds.name} gives item vectors but no query vectors: set "
                           "dataset.caption_features (the same model's caption embeddings), or use a "
                           "token-input backbone (backbone=cart or backbone.input=tokens)")
    return Embeddings([x.id for x in items], vecs, [q.id for q in queries], qvecs)
