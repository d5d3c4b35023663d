"""Multimodal LLM decoders (`backbone=qwen25vl|llava|idefics`, `genretr.backbones.mllm`): they read processor
samples (the query's image and text), learn GRACE's memorize and retrieve samples with SSID's rationale after
the identifier (`genretr.mllm_stage`), and decode over the LLM's vocabulary, so the trie holds each
identifier's LLM tokens, which depend on the model's tokenizer; a scheme's own tokens (`IdTable.new_tokens`)
are added to it, one new token each."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from hydra.utils import instantiate

from genretr.backbones.mllm_vocab import identifier_options

if TYPE_CHECKING:
    from genretr.stages.context import RunContext

log = logging.getLogger(__name__)


class MLLMDecoder:
    reads_query_vectors = False
    stops_early = False  # no held-out validation: backbone.fit.early_stop is refused
    # the add-ons it takes (genretr.stages.addons): pseudo-queries and describe need sample tensors and word IDs
    add_ons = frozenset({"rationale", "limit", "query_texts"})

    # `genretr.mllm_stage` (Lightning) is imported where it is used: `genretr.validate` builds the adapter before
    # Lightning is imported (~5 s)
    def query_inputs(self, ctx: RunContext, ds, emb, queries, table=None, vecs=None):
        from genretr import mllm_stage as M

        return [M.query_sample(ds, q) for q in queries]

    def model_builder(self, ctx: RunContext, ds, emb, table):
        """The model with the identifiers' own tokens added to its vocabulary, their digits kept as the LLM's,
        the atomic classifier head (`genretr.backbones.mllm_vocab`): built alike to train and to load."""
        options = {"reason": ctx.reason(table), **identifier_options(table, ctx.classifier_head())}
        return lambda: instantiate(ctx.cfg.backbone.model, _partial_=True)(**options)

    def training(self, ctx: RunContext, ds, emb, table, model):
        from genretr import mllm_stage as M

        cfg, tr = ctx.cfg.backbone, ctx.cfg.train
        samples = M.training_samples(ds, table, ctx.tasks(), table.reasons, bool(tr.memorize),
                                     int(tr.memorize_repeat), bool(tr.retrieve), ctx.reason(table) != "none")
        samples = ctx.add_ons().extend(ctx, ds, emb, table, samples)  # SSID Fig. 3's sample limit
        log.info("MLLM: %d training samples", len(samples))
        if not samples:
            return None, {}
        dm = M.SampleDataModule(samples, model.collate, int(cfg.fit.batch_size), int(ctx.cfg.seed), str(tr.schedule),
                                int(tr.memorize_epochs))
        return dm, {"reload_dataloaders_every_n_epochs": 1 if dm.memorize_epochs else 0}

    def decoding_table(self, model, table):
        from genretr import mllm_stage as M

        return M.llm_table(model, table)

    def index_key(self, backbone_cfg) -> tuple[list, list]:
        return [backbone_cfg.model._target_, backbone_cfg.model.get("pretrained")], [backbone_cfg]

    def search_add_ons(self, ctx: RunContext, ds, table) -> list:
        return []  # the prompt asks for the rationale or not (backbone.model.reason)
