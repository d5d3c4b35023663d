"""results.json's provenance block (genretr.provenance) and the numerics in the trained stages' keys."""
from __future__ import annotations

import json
import re

import torch

from genretr.pipeline import Pipeline
from genretr.provenance import git_state, versions
from genretr.run import execute


def test_results_carry_provenance(make_cfg, tmp_path):
    threads = torch.get_num_threads()
    try:
        execute(make_cfg("method=embedding", "seed=3", "threads=1", "precision=fp32"), tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    prov = json.loads((tmp_path / "run" / "results.json").read_text())["provenance"]
    from genretr.hardware import cpu_bf16_kind

    assert prov["precision"] == {"option": "fp32", "bf16_hardware": cpu_bf16_kind(), "trainer": "32-true",
                                 "search_step": None}  # no generative search in an embedding run
    assert re.fullmatch(r"[0-9a-f]{40}", prov["git"]["commit"])  # the tests run in a git checkout
    assert isinstance(prov["git"]["dirty"], bool)
    assert prov["seed"] == 3 and prov["torch_threads"] == 1 and prov["device"] == "cpu"
    assert prov["stage_device"] == "cpu" and prov["cuda_peak_mb"] is None  # where the stages put their models
    for name in ("torch", "transformers", "lightning", "hydra-core", "faiss-cpu", "numpy", "python"):
        assert prov["versions"][name], name
    assert set(prov["stage_seconds"]) == {"dataset", "encode", "evaluate"}
    assert all(s >= 0 for s in prov["stage_seconds"].values()) and prov["stage_seconds"]["encode"] > 0


def test_versions_name_missing_packages_as_none(monkeypatch):
    from genretr import provenance

    monkeypatch.setattr(provenance, "PACKAGES", ("torch", "no-such-package-genretr"))
    found = versions()
    assert found["torch"] == torch.__version__.split("+")[0] or found["torch"] == torch.__version__
    assert found["no-such-package-genretr"] is None


def test_git_state_is_the_checkout_genretr_runs_from():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_state()["commit"] == head


def test_thread_count_keys_trained_stages(make_cfg, tmp_path):
    """An encoder trained at one thread count is not reused at another (its numbers differ)."""
    threads = torch.get_num_threads()
    keys = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            p = Pipeline(make_cfg("method=embedding", "stage=encode"), tmp_path / f"run{n}")
            p.run()
            keys[n] = dict(p.keys)
    finally:
        torch.set_num_threads(threads)
    assert keys[1]["dataset"] == keys[2]["dataset"]
    assert keys[1]["encode"] != keys[2]["encode"]


def test_search_step_records_the_dtype_the_engine_ran(make_cfg):
    from genretr.provenance import search_step

    assert search_step(make_cfg(), "cpu") == "float32"  # the default: fp32 search steps
    assert search_step(make_cfg("decoding.precision=bf16"), "cpu") == "bfloat16"
    assert search_step(make_cfg("decoding.precision=null", "precision=fp32"), "cpu") == "float32"
    assert search_step(make_cfg("decoding.precision=bf16", "decoding.engine=hf"), "cpu") is None  # HF: as is
    assert search_step(make_cfg("method=embedding"), "cpu") is None
