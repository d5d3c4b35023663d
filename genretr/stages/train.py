"""The train stage (DESIGN.md): the decoder learns item -> identifier (learning to memorize, GRACE Sec. 3.4)
and query -> identifier (learning to retrieve), plus pseudo-queries (GRACE App. A, CART Sec. 3.3), image
descriptions (GRACE Sec. 4.5) and rationales (SSID Sec. III-D) as configured; MLLM backbones learn from
processor samples (`genretr.mllm_stage`).  `ctx` is the run's `RunContext`: its config, artifact store and
stage keys.  Trained weights are one artifact keyed by the identify key and the train config;
Lightning's last checkpoint under the stage's work directory resumes a killed fit.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from hydra.utils import instantiate

from genretr.data.datamodules import IdentifierDataModule
from genretr.data.embeddings import Embeddings
from genretr.data.schema import RetrievalDataset
from genretr.errors import GenretrError
from genretr.identifiers.base import IdTable
from genretr.artifacts import config_key
from genretr.fingerprint import stage_fingerprint
from genretr.describe import caption_words
from genretr.stages.captions import pseudo_queries
from genretr.samples import concat_samples, decoder_samples, draw_rows, draw_samples
from genretr.training import fit

if TYPE_CHECKING:  # stages read the run's context; only genretr.pipeline makes one
    from genretr.stages.context import RunContext

log = logging.getLogger(__name__)


def run(ctx: RunContext, ds: RetrievalDataset, emb: Embeddings, table: IdTable):
    """The trained decoder for `table` (from the cache when trained before)."""
    if ctx.is_mllm():
        return train_mllm(ctx, ds, table)
    cfg, tr = ctx.cfg.backbone, ctx.cfg.train
    key = ctx.keys["train"] = config_key("train", ctx.keys["identify"], cfg, ctx.train_key(), ctx.cfg.seed,
                                       ctx.cfg.identifier.get("head", "vocab"), ctx.numerics(),
                                       stage_fingerprint("train", cfg))
    tokens = ctx.input_kind() == "tokens"
    describing = bool(tr.get("describe", False))
    if describing and not tokens:
        raise GenretrError("train.describe=true (GRACE Sec. 4.5) needs a token-input backbone: backbone.input=tokens")
    vocab = ctx.query_vocab(ds, table) if tokens else None
    extra = {"src_vocab_size": len(vocab)} if tokens else {}
    out_words = caption_words(ds) if describing else []
    vocab_size = table.vocab_size + len(out_words)
    reasons = ctx.reason_vocab(ds, table)  # SSID Sec. III-D: identifier <reason> rationale </s>
    vocab_size += len(reasons) if reasons else 0
    if ctx.classifier_head():  # GRACE atomic IDs through a classifier head: its own output layer
        if reasons:
            raise GenretrError("identifier.head=classifier ranks identifiers in one step: use train.reason=none")
        extra["tie_embeddings"] = False

    def build():
        return instantiate(cfg.model, vocab_size=vocab_size, input_dim=emb.item_vecs.shape[1], **extra)

    def write(tmp: Path):
        torch.manual_seed(int(ctx.cfg.seed))
        model = build()
        pseudo = pseudo_queries(ctx, ds, emb, table, every_item=str(tr.pseudo_queries_for) == "all") if tr.pseudo_queries else None
        samples = decoder_samples(ds, emb, table, ctx.tasks(), memorize=bool(tr.memorize),
                                  memorize_repeat=int(tr.memorize_repeat), retrieve=bool(tr.retrieve),
                                  pseudo=pseudo, vocab=vocab, max_src_len=int(cfg.get("max_src_len", 32)),
                                  labels_width=1 if ctx.classifier_head() else None,
                                  answers=reasons.answers(table) if reasons else None)
        if describing:
            from genretr import describe

            samples = concat_samples(samples, describe.samples(ds, table, vocab, out_words,
                                                               int(cfg.get("max_src_len", 32)),
                                                               emb.item_vecs.shape[1]))
        if tr.get("limit") is not None:  # SSID Fig. 3: fine-tune on N samples only
            samples = draw_samples(samples, int(tr.limit), int(ctx.cfg.seed))
        log.info("decoder: %d training samples (%d memorize)", len(samples["labels"]),
                 int((samples["phase"] == 0).sum()))
        if len(samples["labels"]):  # train.limit=0: the untrained decoder (the curve's zero point)
            dm = IdentifierDataModule(samples, int(cfg.fit.batch_size), int(ctx.cfg.seed), str(tr.schedule),
                                      int(tr.memorize_epochs))
            fit(model, dm, ctx.cfg, ctx.store.work("train", key), int(cfg.fit.max_epochs), ctx.logger,
                ctx.extra_callbacks, reload_dataloaders_every_n_epochs=1 if dm.memorize_epochs else 0)
        torch.save(model.state_dict(), tmp / "model.pt")

    path = ctx.store.produce("train", key, write)
    model = build()
    model.load_state_dict(torch.load(path / "model.pt"))
    return model.eval()


def train_mllm(ctx: RunContext, ds: RetrievalDataset, table: IdTable):
    """MLLM backbones read samples (images, query text) through their processor (genretr.mllm_stage)."""
    from genretr import mllm_stage as M

    cfg, tr, reason = ctx.cfg.backbone, ctx.cfg.train, ctx.reason()
    key = ctx.keys["train"] = config_key("train", ctx.keys["identify"], cfg, ctx.train_key(), ctx.cfg.seed, ctx.numerics(),
                                       stage_fingerprint("train", cfg))

    def write(tmp: Path):
        torch.manual_seed(int(ctx.cfg.seed))
        model = instantiate(cfg.model, reason=reason)
        samples = M.training_samples(ds, table, ctx.tasks(), ctx.reasons(), bool(tr.memorize),
                                     int(tr.memorize_repeat), bool(tr.retrieve), reason != "none")
        if tr.get("limit") is not None:  # SSID Fig. 3: fine-tune on N samples only
            samples = [samples[i] for i in draw_rows(len(samples), int(tr.limit), int(ctx.cfg.seed))]
        log.info("MLLM: %d training samples", len(samples))
        if samples:
            fit(model, M.SampleDataModule(samples, model.collate, int(cfg.fit.batch_size), int(ctx.cfg.seed)),
                ctx.cfg, ctx.store.work("train", key), int(cfg.fit.max_epochs), ctx.logger, ctx.extra_callbacks)
        torch.save(model.state_dict(), tmp / "model.pt")

    path = ctx.store.produce("train", key, write)
    model = instantiate(cfg.model, reason=reason)
    model.load_state_dict(torch.load(path / "model.pt"))
    return model.eval()
