"""Every stage's cache key, composed in one place (issue 14, "provenance and honest caching").

A key (`genretr.artifacts.config_key`) holds, in this order: the stage's name, the keys of the stages it reads
(a change upstream re-keys everything downstream), the config it reads, the numeric setting of a stage that
trains (`numerics`) and the fingerprint of the code it runs (`genretr.fingerprint.stage_fingerprint`: the
stage's roots in `STAGE_ROOTS` plus the modules the `_target_`s of the listed configs name).  The stages call
the function of their name and never assemble a key themselves.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from omegaconf import OmegaConf

from genretr.artifacts import config_key
from genretr.fingerprint import code_fingerprint, source_fingerprint, stage_fingerprint

if TYPE_CHECKING:  # stages read the run's context; only genretr.pipeline makes one
    from genretr.identifiers.base import IdTable
    from genretr.stages.context import RunContext

# trainer options that change what is shown or logged, not what is learned (left out of the keys)
TRAINER_DISPLAY = ("log_every_n_steps", "enable_model_summary", "enable_progress_bar", "num_sanity_val_steps")
# the numeric libraries whose versions key a trained artifact
NUMERIC_LIBRARIES = ("torch", "transformers", "lightning", "numpy", "faiss-cpu")


def numerics(trainer: dict, devices) -> dict:
    """What sets a trained artifact's numbers besides its config and seed: the trainer (device, precision,
    strategy, clipping…; not its display options), the CPU kernels torch dispatches to (AVX2 / AVX512, AMX or
    AVX512-BF16 for bf16 sum in their own order) and the versions of the numeric libraries.  torch's thread
    count is added per key (`RunContext.numerics`)."""
    from genretr.hardware import bf16_kind
    from genretr.provenance import versions

    trainer = {k: v for k, v in trainer.items() if k not in TRAINER_DISPLAY}
    trainer["devices"] = devices
    found = versions()
    kernels = {"cpu": torch.backends.cpu.get_cpu_capability(), "bf16": bf16_kind(trainer.get("accelerator"))}
    return {"trainer": trainer, "kernels": kernels, "versions": {k: found[k] for k in NUMERIC_LIBRARIES}}


def dataset(ctx: RunContext) -> str:
    """The dataset config, its source files by content (an edited Karpathy JSON is a new dataset) and the
    code that reads them."""
    cfg = ctx.cfg.dataset
    return config_key("dataset", cfg, source_fingerprint(cfg), stage_fingerprint("dataset", cfg))


def encode(ctx: RunContext, splits: list[str], mode) -> str:
    """`mode`: for a dataset that ships item vectors without query vectors, whether the run reads query
    vectors (zeros stand in for token-input decoders); None otherwise."""
    cfg = ctx.cfg.encoder
    return config_key("encode", ctx.keys["dataset"], cfg, ctx.cfg.seed, splits, mode, ctx.numerics(),
                      stage_fingerprint("encode", cfg))


def text_features(tower, digest: str, device="cpu") -> str:
    """A frozen text tower's features of a text list (`digest`) made on `device`, shared by every run and seed:
    keyed by the tower, its preparation there and its own module."""
    return config_key("text-features", type(tower).__qualname__, tower.preparation_id(device), digest,
                      code_fingerprint(type(tower).__module__))


DECODER_SIDE = ("decoder_input",)  # identifier options that the decoder reads, not the identify stage


def scheme_options(identifier) -> dict:
    """The identifier config less its decoder-side options (`DECODER_SIDE`: GENIUS's decoder_input), which key
    the train stage: one set of identifiers serves both."""
    options = OmegaConf.to_container(identifier, resolve=True)
    return {k: v for k, v in options.items() if k not in DECODER_SIDE}


def identify(ctx: RunContext) -> str:
    return config_key("identify", ctx.keys["encode"], scheme_options(ctx.cfg.identifier), ctx.tasks(),
                      ctx.numerics(), stage_fingerprint("identify", ctx.cfg.identifier))


def identify_cache(ctx: RunContext) -> str:
    """The scheme's own cache across identify keys (SSID's generator answers)."""
    return config_key("identify-cache", ctx.keys["encode"], scheme_options(ctx.cfg.identifier),
                      stage_fingerprint("identify-cache", ctx.cfg.identifier))


def captions(ctx: RunContext, item_ids: list[str]) -> str:
    """The captioner-written texts for `item_ids` (`genretr.stages.captions`)."""
    cfg = ctx.cfg
    return config_key("captions", ctx.keys["encode"], cfg.captioner, cfg.seed, sorted(item_ids), ctx.numerics(),
                      stage_fingerprint("captions", cfg.captioner))


def train(ctx: RunContext, table: IdTable) -> str:
    """cfg.train with `reason` as whether a rationale is trained (`both` and `train_only` train alike and
    share a model), what the add-ons' samples read besides it (the pseudo-queries' captioner), the backbone,
    the identifier head."""
    tr = OmegaConf.to_container(ctx.cfg.train, resolve=True)
    tr.pop("reason", None)
    tr = {**tr, "rationale": ctx.reason(table) != "none"}
    cfg = ctx.cfg.backbone
    decoder_side = {k: ctx.cfg.identifier[k] for k in DECODER_SIDE if k in ctx.cfg.identifier}
    return config_key("train", ctx.keys["identify"], cfg, tr, ctx.add_ons().train_key(ctx), ctx.cfg.seed,
                      ctx.cfg.identifier.get("head", "vocab"), *([decoder_side] if decoder_side else []),
                      ctx.numerics(), stage_fingerprint("train", cfg))


def index(ctx: RunContext, split: str, pools: list[str]) -> str:
    """What besides the identifiers decides the tries (an MLLM's tokenizer spells them) is the decoder
    adapter's `index_key`."""
    parts, configs = ctx.decoder().index_key(ctx.cfg.backbone)
    return config_key("index", ctx.keys["identify"], split, pools, *parts, stage_fingerprint("index", *configs))

