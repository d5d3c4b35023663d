"""The word-level decoders trained from sample tensors (`genretr.samples`): the T5 prefix decoder reading the
query's vector (GENIUS Eq. 9-10), the T5 encoder-decoder reading the query's words (GRACE Sec. 3.4 on T5,
`input: tokens`) and CART's fusion seq2seq (`backbone=cart`, tokens).  Their output vocabulary is the
IdTable's, then GRACE Sec. 4.5's describe words and SSID's rationale words (Sec. III-D) when trained."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from hydra.utils import instantiate

from genretr.data.datamodules import IdentifierDataModule
from genretr.describe import caption_words
from genretr.errors import GenretrError
from genretr.samples import concat_samples, decoder_samples, draw_samples
from genretr.stages.captions import pseudo_queries

if TYPE_CHECKING:
    from genretr.stages.context import RunContext

log = logging.getLogger(__name__)
INPUTS = ("prefix", "tokens")


class SequenceDecoder:
    def __init__(self, input: str = "prefix"):
        if input not in INPUTS:
            raise GenretrError(f"backbone.input={input} is not one of {', '.join(INPUTS)}")
        self.input = input

    @property
    def reads_query_vectors(self) -> bool:
        return self.input == "prefix"

    def query_inputs(self, ctx: RunContext, ds, emb, queries, table=None, vecs=None):
        vecs = emb.queries([q.id for q in queries]) if vecs is None else vecs
        if self.input == "prefix":
            return vecs
        vocab = ctx.query_vocab(ds, table)
        return {"z": vecs, "src": vocab.encode([q.text for q in queries], int(ctx.cfg.backbone.get("max_src_len", 32)))}

    def _describing(self, ctx: RunContext) -> bool:
        describing = bool(ctx.cfg.train.get("describe", False))
        if describing and self.input != "tokens":
            raise GenretrError("train.describe=true (GRACE Sec. 4.5) needs a token-input backbone: backbone.input=tokens")
        return describing

    def model_builder(self, ctx: RunContext, ds, emb, table):
        extra = {"src_vocab_size": len(ctx.query_vocab(ds, table))} if self.input == "tokens" else {}
        vocab_size = table.vocab_size + (len(caption_words(ds)) if self._describing(ctx) else 0)
        reasons = ctx.reason_vocab(ds, table)  # SSID Sec. III-D: identifier <reason> rationale </s>
        vocab_size += len(reasons) if reasons else 0
        if ctx.classifier_head():  # GRACE atomic IDs through a classifier head: its own output layer
            if reasons:
                raise GenretrError("identifier.head=classifier ranks identifiers in one step: use train.reason=none")
            extra["tie_embeddings"] = False
        return lambda: instantiate(ctx.cfg.backbone.model, vocab_size=vocab_size, input_dim=emb.item_vecs.shape[1],
                                   **extra)

    def training(self, ctx: RunContext, ds, emb, table, model):
        cfg, tr = ctx.cfg.backbone, ctx.cfg.train
        describing, max_src_len = self._describing(ctx), int(cfg.get("max_src_len", 32))
        vocab = ctx.query_vocab(ds, table) if self.input == "tokens" else None
        reasons = ctx.reason_vocab(ds, table)
        pseudo = (pseudo_queries(ctx, ds, emb, table, every_item=str(tr.pseudo_queries_for) == "all")
                  if tr.pseudo_queries else None)
        samples = decoder_samples(ds, emb, table, ctx.tasks(), memorize=bool(tr.memorize),
                                  memorize_repeat=int(tr.memorize_repeat), retrieve=bool(tr.retrieve),
                                  pseudo=pseudo, vocab=vocab, max_src_len=max_src_len,
                                  labels_width=1 if ctx.classifier_head() else None,
                                  answers=reasons.answers(table) if reasons else None)
        if describing:
            from genretr import describe

            samples = concat_samples(samples, describe.samples(ds, table, vocab, caption_words(ds), max_src_len,
                                                               emb.item_vecs.shape[1]))
        if tr.get("limit") is not None:  # SSID Fig. 3: fine-tune on N samples only
            samples = draw_samples(samples, int(tr.limit), int(ctx.cfg.seed))
        log.info("decoder: %d training samples (%d memorize)", len(samples["labels"]),
                 int((samples["phase"] == 0).sum()))
        if not len(samples["labels"]):  # train.limit=0: the untrained decoder (the curve's zero point)
            return None, {}
        dm = IdentifierDataModule(samples, int(cfg.fit.batch_size), int(ctx.cfg.seed), str(tr.schedule),
                                  int(tr.memorize_epochs))
        return dm, {"reload_dataloaders_every_n_epochs": 1 if dm.memorize_epochs else 0}

    def decoding_table(self, model, table):
        return table

    def index_key(self, backbone_cfg) -> tuple[list, list]:
        return [], []

    def search_model(self, ctx: RunContext, ds, model, table):
        if ctx.reason(table) != "both":
            return model
        from genretr.rationale import AnswerWithReason  # identifiers end where the model writes <reason>

        if ctx.cfg.decoding.get("engine", "genretr") != "genretr":
            raise GenretrError("train.reason=both is decoded by decoding.engine=genretr only")
        return AnswerWithReason(model, ctx.reason_vocab(ds, table).sep)
