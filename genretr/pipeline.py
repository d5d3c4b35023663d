"""The run, stage by stage (DESIGN.md): dataset → encode → identify → train → index → evaluate.

The only module that sequences the stages (`genretr.stages`).  Each stage's artifact is keyed by the config
and the code that produced it plus its upstream keys (`genretr.artifacts`, `genretr.fingerprint`), so reruns
skip finished stages, a sweep over backbones shares one encode + identify, and a killed run resumes.
`stage=NAME` stops after that stage.
"""
from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from genretr.data.embeddings import Embeddings
from genretr.data.schema import RetrievalDataset
from genretr.errors import GenretrError
from genretr.hardware import release_freed_memory
from genretr.identifiers.base import IdTable
from genretr.stages import STAGES, dataset, encode, evaluate, identify, index, train
from genretr.stages.context import RunContext


class Pipeline:
    """One run: its `RunContext` and the stages in order.  The stage methods run (or reuse) one stage each,
    for scripts that stop in between (experiments/)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, logger=None, extra_callbacks=()):
        self.ctx = RunContext(cfg, Path(run_dir), logger, list(extra_callbacks))
        self.cfg, self.store, self.keys = cfg, self.ctx.store, self.ctx.keys
        self.stage_seconds: dict[str, float] = {}  # wall time per stage (results.json's provenance)

    def dataset(self) -> RetrievalDataset:
        return dataset.run(self.ctx)

    def encode(self, ds: RetrievalDataset) -> Embeddings:
        return encode.run(self.ctx, ds)

    def identify(self, ds: RetrievalDataset, emb: Embeddings) -> IdTable:
        return identify.run(self.ctx, ds, emb, self.scheme_context)

    def scheme_context(self, ds: RetrievalDataset, emb: Embeddings, items: list[str], workdir: Path):
        """What the identifier scheme learns from besides the items (a subclass may add to it)."""
        return identify.scheme_context(self.ctx, ds, emb, items, workdir)

    def train(self, ds: RetrievalDataset, emb: Embeddings, table: IdTable):
        return train.run(self.ctx, ds, emb, table)

    def training_summary(self) -> dict | None:
        """How the decoder's fit went (`genretr.stages.train.fit_summary`): results.json's ``training``."""
        return train.fit_summary(self.ctx)

    def index(self, ds: RetrievalDataset, table: IdTable) -> dict:
        return index.run(self.ctx, ds, table)

    def tries(self, ds: RetrievalDataset, table: IdTable) -> dict:
        """task -> the trie of its pool, built in memory as the index stage builds it (a run with added items)."""
        return index.in_memory(self.ctx, ds, table)

    def evaluate(self, ds: RetrievalDataset, emb: Embeddings, model=None, table=None, tries=None) -> dict:
        return evaluate.run(self.ctx, ds, emb, model, table, tries)

    def searcher(self, ds: RetrievalDataset, emb: Embeddings, task: str, model, table, tries):
        """query batch -> (rankings, q/s) for `task` (genretr.stages.evaluate.searcher)."""
        return evaluate.searcher(self.ctx, ds, emb, task, model, table, tries)

    def hits(self, ds: RetrievalDataset, emb: Embeddings, queries, query_inputs, rankings, model=None, table=None):
        """`rankings` of `queries` as scored `Hit`s (genretr.stages.evaluate.hits)."""
        return evaluate.hits(self.ctx, ds, emb, queries, query_inputs, rankings, model, table)

    def decoding_table(self, model, table: IdTable) -> IdTable:
        """The identifiers as the decoder spells them (an MLLM's: its LLM tokens)."""
        return self.ctx.decoder().decoding_table(model, table)

    def check_weights(self) -> None:
        """The backbone's pretrained weights are on this machine (`check_weights` of its class), checked by `run`
        before any stage when it goes on past identify, and by `trained`: the train stage builds the backbone
        even from the cache, so a missing checkpoint would otherwise surface only after the encoder has trained.
        A generator's weights (SSID's MLLM, `generator=backbone` included) are not checked here: its answers
        may all be cached, and it loads them when it first writes one."""
        model = self.cfg.get("backbone", {}).get("model")
        if not model or not model.get("pretrained") or self.cfg.method.get("decoder") is None:
            return
        from hydra.utils import get_object

        check = getattr(get_object(model._target_), "check_weights", None)
        if check is not None:
            check(str(model.pretrained))

    def trained(self):
        """(dataset, embeddings, decoding table, model, tries) of one generative run, every stage up to the index run
        or reused from the cache: what the analysis scripts under experiments/ search with."""
        self.check_weights()
        ds = self.dataset()
        emb = self.encode(ds)
        table = self.identify(ds, emb)
        model = self.train(ds, emb, table)
        table = self.decoding_table(model, table)
        return ds, emb, table, model, self.index(ds, table)

    def task_rankings(self, task: str = "t2i"):
        """(dataset, queries, rankings) of one generative run's `task` on the eval split (`trained`)."""
        ds, emb, table, model, tries = self.trained()
        queries = ds.queries(self.cfg.eval.split, task)
        rankings, _ = self.searcher(ds, emb, task, model, table, tries)(self.ctx.queries_of(ds, emb, queries, table))
        return ds, queries, rankings

    def _timed(self, stage: str, work, *args):
        """`work(*args)`, its wall time added to `stage_seconds[stage]` (results.json's provenance)."""
        start = time.perf_counter()
        try:
            return work(*args)
        finally:
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.perf_counter() - start
            release_freed_memory()

    def run(self) -> dict | None:
        stop = self.cfg.stage
        if stop not in STAGES:
            raise GenretrError(f"stage={stop} is not one of {', '.join(STAGES)}")
        done = lambda s: STAGES.index(s) >= STAGES.index(stop)
        if not done("identify"):
            self.check_weights()
        ds = self._timed("dataset", self.dataset)
        if done("dataset"):
            return None
        emb = self._timed("encode", self.encode, ds)
        if done("encode"):
            return None
        if self.ctx.decoder() is None:  # the embedding baseline: no identifiers, no decoder
            return self._timed("evaluate", self.evaluate, ds, emb) if stop == "evaluate" else None
        table = self._timed("identify", self.identify, ds, emb)
        if done("identify"):
            return None
        model = self._timed("train", self.train, ds, emb, table)
        if done("train"):
            return None
        table = self.decoding_table(model, table)
        tries = self._timed("index", self.index, ds, table)
        if done("index"):
            return None
        return self._timed("evaluate", self.evaluate, ds, emb, model, table, tries)
