"""The train stage (DESIGN.md): the decoder learns item -> identifier (learning to memorize, GRACE Sec. 3.4)
and query -> identifier (learning to retrieve), plus pseudo-queries (GRACE App. A, CART Sec. 3.3), image
descriptions (GRACE Sec. 4.5) and rationales (SSID Sec. III-D) as configured; the samples and the model are
the decoder adapter's (`genretr.stages.decoders`).  Trained weights are one artifact keyed by the identify key
and the train config; Lightning's last checkpoint under the stage's work directory resumes a killed fit.
The artifact's ``fit.json`` says how many epochs were trained (and, with `backbone.fit.early_stop`, which epoch's
weights were kept); results.json repeats it as ``training``.
A model with a `trainable_state_dict()` is saved as that state alone (`genretr.training.trained_state`) and
loaded over a fresh build, seeded as the trained one was, so that its frozen random weights match.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from genretr.data.embeddings import Embeddings
from genretr.data.schema import RetrievalDataset
from genretr.identifiers.base import IdTable
from genretr.stages import keys
from genretr.training import EarlyStop, fit, load_trained_state, trained_state

if TYPE_CHECKING:  # stages read the run's context; only genretr.pipeline makes one
    from genretr.stages.context import RunContext


def run(ctx: RunContext, ds: RetrievalDataset, emb: Embeddings, table: IdTable):
    """The trained decoder for `table` (from the cache when trained before); what it is and what it learns
    from is its adapter's (`ctx.decoder()`, `genretr.stages.decoders`)."""
    decoder, cfg = ctx.decoder(), ctx.cfg.backbone
    ctx.add_ons().check(decoder, ctx, table)
    key = ctx.keys["train"] = keys.train(ctx, table)
    unseeded_build = decoder.model_builder(ctx, ds, emb, table)

    def build():  # the same weights to train and to load into: random ones come from the seed
        torch.manual_seed(int(ctx.cfg.seed))
        return unseeded_build()

    def write(tmp: Path):
        model = build()
        datamodule, fit_options = decoder.training(ctx, ds, emb, table, model)
        summary = {"max_epochs": int(cfg.fit.max_epochs), "epochs": 0}
        if datamodule is not None:
            trainer = fit(model, datamodule, ctx.cfg, ctx.store.work("train", key), int(cfg.fit.max_epochs),
                          ctx.logger, ctx.extra_callbacks, **fit_options)
            summary["epochs"] = int(trainer.current_epoch)
            stops = [c.summary() for c in fit_options.get("callbacks", ()) if isinstance(c, EarlyStop)]
            if stops:
                summary["early_stop"] = stops[0]
        torch.save(trained_state(model), tmp / "model.pt")
        (tmp / "fit.json").write_text(json.dumps(summary, indent=2) + "\n")

    path = ctx.store.produce("train", key, write)
    model = build()
    load_trained_state(model, torch.load(path / "model.pt", map_location="cpu"))
    return model.to(ctx.device).eval()  # the search and its add-ons run where the model is


def fit_summary(ctx: RunContext) -> dict | None:
    """The train artifact's fit.json (epochs trained, the early stop's decision), when this run trained or
    reused one that has it."""
    key = ctx.keys.get("train")
    path = ctx.store.artifact("train", key) / "fit.json" if key else None
    return json.loads(path.read_text()) if path is not None and path.exists() else None
