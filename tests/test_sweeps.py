"""Every experiment preset runs (lightning-hydra-template's test_sweeps): each value of each swept
parameter appears in at least one tiny run, with one artifact cache shared by the whole module (so a
model trained for one preset serves the others).  Dataset sizes stay tiny: `dataset.splits.*` sweeps
are not expanded.  CI runs each preset's first job (but for `SLOW_PRESETS`, covered elsewhere); the other values are `slow`
(make test-slow)."""
from __future__ import annotations

import itertools
import logging
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from genretr.pipeline import Pipeline
from tests.conftest import CONF, TINY, compose_cfg


def presets() -> list[str]:
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def covering_jobs(params: dict[str, str]) -> list[list[str]]:
    """Few override lists such that every value of every parameter occurs in one of them."""
    values = {k: [v.strip() for v in str(vs).split(",")] for k, vs in params.items()
              if not k.startswith("dataset.splits")}
    if not values:
        return [[]]
    n = max(len(v) for v in values.values())
    return [[f"{k}={vs[i % len(vs)]}" for k, vs in values.items()] for i in range(n)]


# Presets whose first job is `slow` too: the family's end-to-end run in CI is elsewhere (named here).
SLOW_PRESETS = {
    "ssid_table2_mllm": "tests/test_golden_results.py[mllm_qwen_ssid] runs SSID on a tiny Qwen2.5-VL",
    "genius_ablation": "genius_base's job here and tests/test_golden_results.py[t5_prefix_genius_rerank] run GENIUS",
    "grace_recipe": "the recipe alone: grace_table1's and ssid_table1's jobs here run it (with their identifiers)",
}

JOBS = []
for name in presets():
    sweep = OmegaConf.load(CONF / "experiment" / f"{name}.yaml").get("hydra", {}).get("sweeper", {}).get("params", {})
    for k, job in enumerate(covering_jobs(dict(sweep))):
        JOBS.append(pytest.param(name, job, id=f"{name}:{','.join(job) or 'default'}",
                                 marks=[pytest.mark.slow] if k or name in SLOW_PRESETS else []))


def test_every_slow_preset_exists():
    assert set(SLOW_PRESETS) <= set(presets())  # a renamed preset would otherwise silently run its job in CI


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("sweep-cache")


def identifier_lengths(run) -> set[int]:
    return {len(run.table.tokens(i)) - 1 for i in run.table.item_ids}  # EOS aside


def layers(model, side: str) -> int:
    """Encoder or decoder layers of a trained CART or T5 decoder."""
    if hasattr(model, "t5"):
        return model.t5.config.num_decoder_layers if side == "decoder" else model.t5.config.num_layers
    return len(getattr(model, side))


def trained_samples(run) -> tuple[int, int] | None:
    """(samples, memorize samples) the train stage logged, None when it reused a model of the shared cache."""
    for record in run.log:
        words = record.getMessage().split()
        if words[:1] == ["decoder:"] and "training samples" in record.getMessage():
            return int(words[1]), int(words[4].lstrip("("))
    return None


def check_beams(run, value):
    """No ranking holds items of more identifiers than the beams."""
    _, _, rankings = run.p.task_rankings(run.cfg.eval.tasks[0])
    table = run.p.decoding_table(run.model, run.table)
    assert max(len({table.text(i) for i in r}) for r in rankings) <= int(value)


def samples_there_are(run) -> int | None:
    """The training samples of a run whose train.limit asked for more (genretr.samples warns, then takes all)."""
    for record in run.log:
        words = record.getMessage().split()
        if words[1:4] == ["there", "are", "only"]:
            return int(words[4])
    return None


def check_samples(run, limit=None, memorize=None):
    counted = trained_samples(run)
    if counted is not None:
        assert limit is None or counted[0] == min(int(limit), samples_there_are(run) or int(limit))
        assert memorize is None or (counted[1] > 0) == (memorize == "true")


# a swept key -> what its value does to the run (`run`: the job's pipeline and stage outputs), so that a value
# that never reaches its component fails here
REACHES = {
    "backbone.model.decoder_layers": lambda run, v: layers(run.model, "decoder") == int(v),
    "backbone.model.encoder_layers": lambda run, v: layers(run.model, "encoder") == int(v),
    "identifier.num_codebooks": lambda run, v: identifier_lengths(run) == {int(v) + 2},  # k, codes, unique token
    "identifier.codebook_size": lambda run, v: len({run.table.tokens(i)[1] for i in run.table.item_ids}) <= int(v),
    "codebooks": lambda run, v: max(identifier_lengths(run)) == int(run.cfg.identifier.num_levels)
    + bool(run.cfg.identifier.get("unique_suffix", False)),
    "decoding.num_beams": lambda run, v: check_beams(run, v) is None,
    "train.limit": lambda run, v: check_samples(run, limit=v) is None,
    "train.memorize": lambda run, v: check_samples(run, memorize=v) is None,
    # cart_recipe's rows (debug=tiny sets epochs and batch; tests/test_configs.py checks each row's stage keys)
    "change": lambda run, v: check_samples(run, memorize=str(run.cfg.changes[v].memorize).lower()) is None,
    "train.reason": lambda run, v: (run.model.hparams.vocab_size > run.table.vocab_size) == (v != "none"),
    "method": lambda run, v: ("train" in run.p.ctx.keys) == (v != "embedding"),  # the train stage ran
    "identifier.decoder_input": lambda run, v: (run.p.ctx.decoder_space(run.p.dataset(), run.p.encode(run.p.dataset()))
                                                is not None) == (v == "fused"),
    "identifier": lambda run, v: {
        "numeric": lambda: all(run.table.vocab[t].isdigit() for i in run.table.item_ids
                               for t in run.table.tokens(i)[:-1]),
        "atomic": lambda: identifier_lengths(run) == {1} and len({run.table.text(i) for i in run.table.item_ids})
        == len(run.table.item_ids)}.get(v, lambda: True)(),
}


@pytest.mark.parametrize("name,job", JOBS)
def test_preset_job_runs(name, job, cache, tmp_path, caplog):
    overrides = [f"experiment={name}", *TINY, "hydra.mode=RUN", *job]
    cfg = compose_cfg([o for o in overrides], tmp_path, cache)
    p = Pipeline(cfg, tmp_path)
    with caplog.at_level(logging.INFO, logger="genretr.stages.decoders.sequence"):
        out = p.run()
    swept = dict(o.split("=", 1) for o in job)
    if any(k in REACHES for k in swept):
        ds = p.dataset()
        emb = p.encode(ds)
        table = p.identify(ds, emb) if cfg.method.decoder is not None else None
        run = SimpleNamespace(p=p, cfg=cfg, table=table, log=caplog.records,
                              model=p.train(ds, emb, table) if table is not None else None)
        for key, value in swept.items():
            if key in REACHES:
                assert REACHES[key](run, value), f"{key}={value} did not reach its component"
    ds, split, cap = p.dataset(), cfg.eval.split, cfg.eval.get("max_queries")
    for task in cfg.eval.tasks:  # every task the preset asks for is evaluated, on all its queries
        asked = len(ds.queries(split, task))
        assert out[task]["queries"] == (min(asked, int(cap)) if cap else asked) > 0
        m = out[task]
        assert m["R@1"] <= m["MRR@10"] <= m["R@10"] and m["R@1"] <= m.get("R@5", m["R@10"]) <= m["R@10"]


def test_covering_jobs_cover_every_value():
    jobs = covering_jobs({"a": "1,2,3", "b": "x,y", "dataset.splits.test": "5,6"})
    assert len(jobs) == 3 and {j[0] for j in jobs} == {"a=1", "a=2", "a=3"} and {j[1] for j in jobs} == {"b=x", "b=y"}
    assert list(itertools.chain(*jobs)).count("dataset.splits.test=5") == 0
