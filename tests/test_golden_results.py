"""Fixed-seed results of every backbone kind, recorded before the stage redesign (issue 15): a refactor
that moves code must leave every metric and every query's first-hit rank exactly where it was.

One thread, fp32 (the same numbers on any x86 CPU of this kind), `debug=tiny`, one shared cache so the
encoder is trained once.  After an intended change of results, rewrite the record on purpose:
``GENRETR_GOLDEN=write pytest tests/test_golden_results.py`` and say why in the commit.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from genretr.run import execute

RECORD = Path(__file__).with_name("golden") / "results_tiny.json"
COMMON = ["threads=1", "precision=fp32"]
CONFIGS = {
    "embedding": ["method=embedding"],
    "t5_prefix_string": [],
    "t5_tokens_structured": ["backbone.input=tokens", "identifier=structured", "train.pseudo_queries=true"],
    "t5_prefix_ssid_rationale": ["identifier=ssid"],
    "t5_prefix_genius_rerank": ["identifier=genius", "decoding.rerank=true"],
    "t5_prefix_atomic_classifier": ["identifier=atomic", "identifier.head=classifier"],
    "cart": ["backbone=cart", "identifier=cart", "train.memorize=false", "train.pseudo_queries=true",
             "train.pseudo_queries_for=all"],
    "mllm_qwen_ssid": ["identifier=ssid", "backbone=qwen25vl", "eval.max_queries=20", "decoding.num_beams=10",
                       "backbone.fit.max_epochs=1", "train.memorize_repeat=1"],
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("golden-cache")


def _outcome(cfg, run_dir: Path) -> dict:
    threads = torch.get_num_threads()
    try:
        metrics = execute(cfg, run_dir)
    finally:
        torch.set_num_threads(threads)
    per_query = json.loads((run_dir / "per_query.json").read_text())
    return {"metrics": {t: {k: v for k, v in m.items() if k != "q_per_s"} for t, m in metrics.items()},
            "ranks": {t: dict(zip(v["query_ids"], v["rank"])) for t, v in per_query.items()}}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_results_match_the_record(name, make_cfg, cache, tmp_path):
    cfg = make_cfg(*COMMON, *CONFIGS[name], cache=cache, run=name)
    got = _outcome(cfg, tmp_path / name)
    if os.environ.get("GENRETR_GOLDEN") == "write":
        record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
        record[name] = {"overrides": CONFIGS[name], **got}
        RECORD.parent.mkdir(exist_ok=True)
        RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {name}")
    want = json.loads(RECORD.read_text())[name]
    assert want["overrides"] == CONFIGS[name], "the record was made with other overrides: rewrite it"
    assert got["metrics"] == want["metrics"]
    assert got["ranks"] == want["ranks"]
