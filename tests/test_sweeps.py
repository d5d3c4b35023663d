"""Every experiment preset runs (lightning-hydra-template's test_sweeps): each value of each swept
parameter appears in at least one tiny run, with one artifact cache shared by the whole module (so a
model trained for one preset serves the others).  Dataset sizes stay tiny: `dataset.splits.*` sweeps
are not expanded.  CI runs each preset's first job (but for `SLOW_PRESETS`, covered elsewhere); the other values are `slow`
(make test-slow)."""
from __future__ import annotations

import itertools

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


@pytest.mark.parametrize("name,job", JOBS)
def test_preset_job_runs(name, job, cache, tmp_path):
    overrides = [f"experiment={name}", *TINY, "hydra.mode=RUN", *job]
    cfg = compose_cfg([o for o in overrides], tmp_path, cache)
    p = Pipeline(cfg, tmp_path)
    out = p.run()
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
