"""The word-level decoders trained from sample tensors (`genretr.samples`): the T5 prefix decoder reading the
query's vector (GENIUS Eq. 9-10), the T5 encoder-decoder reading the query's words (GRACE Sec. 3.4 on T5,
`input: tokens`) and CART's fusion seq2seq (`backbone=cart`, tokens).  Their output vocabulary is the
IdTable's, then GRACE Sec. 4.5's describe words and SSID's rationale words (Sec. III-D) when trained."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from hydra.utils import instantiate

from genretr.errors import GenretrError
from genretr.samples import decoder_samples

if TYPE_CHECKING:
    from genretr.stages.context import RunContext

log = logging.getLogger(__name__)
INPUTS = ("prefix", "tokens")
ADD_ONS = frozenset({"pseudo_queries", "rationale", "limit", "query_texts"})  # genretr.stages.addons


class SequenceDecoder:
    stops_early = True  # backbone.fit.early_stop: validates on held-out training queries

    def __init__(self, input: str = "prefix"):
        if input not in INPUTS:
            raise GenretrError(f"backbone.input={input} is not one of {', '.join(INPUTS)}")
        self.input = input
        # GRACE Sec. 4.5's describe prompt names an identifier in words: a token-input decoder only
        self.add_ons = ADD_ONS | ({"describe"} if input == "tokens" else set())

    @property
    def reads_query_vectors(self) -> bool:
        return self.input == "prefix"

    def query_inputs(self, ctx: RunContext, ds, emb, queries, table=None, vecs=None):
        """The queries' vectors (in the scheme's decoder space, GENIUS Eq. 9, beside the encoder's own as
        ``encoder_z`` for re-ranking), and their tokens for a token-input decoder."""
        vecs = emb.queries([q.id for q in queries]) if vecs is None else vecs
        space = self.space(ctx, ds, emb)
        out = {"z": vecs} if space is None else {"z": space.queries(queries, vecs), "encoder_z": vecs}
        if self.input == "tokens":
            vocab = ctx.query_vocab(ds, table)
            out["src"] = vocab.encode([q.text for q in queries], int(ctx.cfg.backbone.get("max_src_len", 32)))
        return out["z"] if list(out) == ["z"] else out

    def space(self, ctx: RunContext, ds, emb):
        """The scheme's decoder space (GENIUS Eq. 9) for the prefix decoder, which reads a query by its vector; a
        token-input decoder reads its words, and its image-only samples keep the encoder's vectors."""
        return ctx.decoder_space(ds, emb) if self.input == "prefix" else None

    def model_builder(self, ctx: RunContext, ds, emb, table):
        extra = {}
        if self.input == "tokens":
            vocab = ctx.query_vocab(ds, table)
            extra["src_vocab_size"] = len(vocab)
            tied = ctx.add_ons().tied_query_words(ctx, ds, table)  # describe's ID words (backbones.tied_source)
            if tied:
                extra["tied_src_tokens"] = [[vocab.index[w], t] for w, t in tied.items()]
        # the output vocabulary: the identifiers', then the add-ons' words (describe, SSID's rationale)
        vocab_size = table.vocab_size + ctx.add_ons().output_words(ctx, ds, table)
        if ctx.classifier_head():  # GRACE atomic IDs through a classifier head: its own output layer
            if ctx.reason(table) != "none":
                raise GenretrError("identifier.head=classifier ranks identifiers in one step: use train.reason=none")
            extra["tie_embeddings"] = False
        return lambda: instantiate(ctx.cfg.backbone.model, vocab_size=vocab_size, input_dim=emb.item_vecs.shape[1],
                                   **extra)

    def training(self, ctx: RunContext, ds, emb, table, model):
        # Lightning here, not at the top: `genretr.validate` builds the adapter before Lightning is imported (~5 s)
        from genretr.data.datamodules import IdentifierDataModule
        from genretr.training import early_stop_callbacks, early_stop_holdout

        cfg, tr, add_ons = ctx.cfg.backbone, ctx.cfg.train, ctx.add_ons()
        vocab = ctx.query_vocab(ds, table) if self.input == "tokens" else None
        samples = decoder_samples(ds, emb, table, ctx.tasks(), memorize=bool(tr.memorize),
                                  memorize_repeat=int(tr.memorize_repeat), retrieve=bool(tr.retrieve), vocab=vocab,
                                  max_src_len=int(cfg.get("max_src_len", 32)),
                                  labels_width=1 if ctx.classifier_head() else None, space=self.space(ctx, ds, emb),
                                  **add_ons.sample_options(ctx, ds, emb, table))
        samples = add_ons.extend(ctx, ds, emb, table, samples, vocab)
        log.info("decoder: %d training samples (%d memorize)", len(samples["labels"]),
                 int((samples["phase"] == 0).sum()))
        if not len(samples["labels"]):  # train.limit=0: the untrained decoder (the curve's zero point)
            return None, {}
        dm = IdentifierDataModule(samples, int(cfg.fit.batch_size), int(ctx.cfg.seed), str(tr.schedule),
                                  int(tr.memorize_epochs), early_stop_holdout(cfg.fit))
        if dm.val is not None:
            log.info("decoder: %d samples of held-out training queries to stop early on", len(dm.val))
        return dm, {"reload_dataloaders_every_n_epochs": 1 if dm.memorize_epochs else 0,
                    "callbacks": early_stop_callbacks(cfg.fit, dm.memorize_epochs),
                    **({} if dm.val is not None else {"limit_val_batches": 0})}  # no held-out queries: no validation

    def decoding_table(self, model, table):
        return table

    def index_key(self, backbone_cfg) -> tuple[list, list]:
        return [], []

    def search_add_ons(self, ctx: RunContext, ds, table) -> list:
        if ctx.reason(table) != "both":
            return []
        from genretr.evaluation.search import ReasonAfterIdentifier  # identifiers end where it writes <reason>

        return [ReasonAfterIdentifier(ctx.reason_vocab(ds, table).sep)]
