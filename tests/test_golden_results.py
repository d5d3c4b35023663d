"""Fixed-seed results of every backbone kind, recorded before the stage redesign (issue 15): a refactor
that moves code must leave every metric and every query's first-hit rank exactly where it was.

One thread, fp32, `debug=tiny`, one shared cache so the encoder is trained once.  Exact bits depend on the
CPU even in fp32: the record's outcome is the one the AMD machines give (AVX2-only and AVX512-BF16), and a CPU
kind that gives a config another outcome keeps it for that config under its label (`CPU_KIND`: vendor, torch's
CPU capability, bf16 kind; an Intel Xeon with AMX ranks 30 of the tiny CART run's 100 queries otherwise, by
kernels that sum in another order, our reading).

After an intended change of results, rewrite the record on purpose on an AVX2-only AMD CPU,
``GENRETR_GOLDEN=write pytest tests/test_golden_results.py`` (this drops the other CPU kinds' outcomes of the
configs it rewrites), then ``GENRETR_GOLDEN=write-kernels`` on each other CPU kind at hand (it keeps that kind's
outcome of each config where it differs from the record's), and say why in the commit.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from genretr.hardware import cpu_bf16_kind, cpu_vendor
from genretr.run import execute

CPU_KIND = f"{cpu_vendor()}/{torch.backends.cpu.get_cpu_capability()}/{cpu_bf16_kind()}"
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
    mode = os.environ.get("GENRETR_GOLDEN")
    if mode in ("write", "write-kernels"):
        record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
        if mode == "write" or name not in record:
            record[name] = {"overrides": CONFIGS[name], **got}
        elif got != {k: record[name][k] for k in got}:
            record[name].setdefault("kernels", {})[CPU_KIND] = got
        else:  # this kind now gives the record's outcome: drop an older outcome of its own
            record[name].get("kernels", {}).pop(CPU_KIND, None)
        RECORD.parent.mkdir(exist_ok=True)
        RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {name}")
    record = json.loads(RECORD.read_text())[name]
    assert record["overrides"] == CONFIGS[name], "the record was made with other overrides: rewrite it"
    want = record.get("kernels", {}).get(CPU_KIND, record)
    assert got["metrics"] == want["metrics"], f"on {CPU_KIND}"
    assert got["ranks"] == want["ranks"], f"on {CPU_KIND}"
