"""The stage pipeline end to end on tiny configs: every stage, stop points, reuse, resume."""
from __future__ import annotations

import json

import pytest
import torch

from genretr.run import execute
from genretr.training import FROZEN_FINGERPRINT, SimulatedKill, StopAfterEpochs


def test_generative_end_to_end(make_cfg, tmp_path):
    cfg = make_cfg()
    metrics = execute(cfg, tmp_path / "run")
    m = metrics["t2i"]
    assert 0.0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 1.0
    assert m["queries"] == 100  # 20 test images x 5 captions
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["metrics"]["t2i"]["R@10"] == m["R@10"] and results["method"] == "generative"
    links = json.loads((tmp_path / "run" / "artifacts.json").read_text())
    assert set(links) == {"dataset", "encode", "identify", "train", "index"}
    for stage in links:
        assert (tmp_path / "run" / "artifacts" / stage).resolve().is_dir()


def test_embedding_baseline_every_task(make_cfg, tmp_path):
    cfg = make_cfg("method=embedding", "eval.tasks=[t2i,i2t,t2it,it2i]")
    metrics = execute(cfg, tmp_path / "run")
    assert set(metrics) == {"t2i", "i2t", "t2it", "it2i"}
    assert metrics["i2t"]["queries"] == 20
    for m in metrics.values():
        assert 0.0 <= m["R@1"] <= m["R@10"] <= 1.0


def test_generative_on_other_tasks(make_cfg, tmp_path):
    metrics = execute(make_cfg("eval.tasks=[i2t,t2it]"), tmp_path / "run")
    assert set(metrics) == {"i2t", "t2it"}


# text-features: the frozen MiniLM features the encode stage keeps for every seed (genretr.stages.encode)
@pytest.mark.parametrize("stop,written", [("dataset", {"dataset"}), ("encode", {"dataset", "text-features", "encode"}),
                                          ("identify", {"dataset", "text-features", "encode", "identify"}),
                                          ("index", {"dataset", "text-features", "encode", "identify", "train",
                                                     "index"})])
def test_stage_stops(make_cfg, tmp_path, stop, written):
    cfg = make_cfg(f"stage={stop}")
    assert execute(cfg, tmp_path / "run") is None
    made = {p.name for p in (tmp_path / "cache").iterdir() if any(p.glob("*/artifact"))}
    assert made == written
    assert not (tmp_path / "run" / "results.json").exists()


def test_rerun_reuses_every_stage(make_cfg, tmp_path):
    first = execute(make_cfg(), tmp_path / "run")
    arts = sorted((tmp_path / "cache").glob("*/*/artifact"))
    mtimes = [a.stat().st_mtime_ns for a in arts]
    second = execute(make_cfg(run="again"), tmp_path / "again")
    assert second == {t: {**m, "q_per_s": second[t]["q_per_s"]} for t, m in first.items()}
    assert [a.stat().st_mtime_ns for a in sorted((tmp_path / "cache").glob("*/*/artifact"))] == mtimes


def test_backbone_sweep_shares_upstream(make_cfg, tmp_path):
    execute(make_cfg(), tmp_path / "run")
    execute(make_cfg("backbone.model.num_layers=2", run="deeper"), tmp_path / "deeper")
    count = lambda stage: len(list((tmp_path / "cache" / stage).glob("*/artifact")))
    assert (count("encode"), count("identify"), count("train")) == (1, 1, 2)


MLLM = ("backbone=qwen25vl", "identifier=ssid", "train.memorize_repeat=1", "eval.max_queries=8",
        "decoding.num_beams=3")


@pytest.mark.parametrize("backbone", [(), pytest.param(MLLM, marks=pytest.mark.slow)], ids=["t5", "mllm"])
def test_killed_training_resumes_to_same_result(backbone, make_cfg, tmp_path):
    """Interrupt decoder training after one epoch, rerun the same config: same model, same metrics.  The MLLM
    (LoRA) checkpoints and saves its adapters and identifier rows only, over frozen weights rebuilt from the seed."""
    over = (*backbone, f"backbone.fit.max_epochs={2 if backbone else 3}")
    reference = execute(make_cfg(*over, cache=tmp_path / "ref"), tmp_path / "ref_run")

    shared = tmp_path / "cache"
    execute(make_cfg(*over, "stage=identify", cache=shared), tmp_path / "run")
    with pytest.raises(SimulatedKill):
        execute(make_cfg(*over, cache=shared), tmp_path / "run", extra_callbacks=[StopAfterEpochs(1)])
    assert not list((shared / "train").glob("*/artifact"))  # nothing half-written
    last = list((shared / "train").glob("*/work/last.ckpt"))
    assert last
    if backbone:
        kept = set(torch.load(last[0], weights_only=False)["state_dict"])
        assert kept and all(".lora_" in k or k.endswith(".rows") for k in kept)
    resumed = execute(make_cfg(*over, cache=shared), tmp_path / "run")
    assert not list((shared / "train").glob("*/work"))  # the checkpoints go once the artifact is written

    ref_model = next((tmp_path / "ref" / "train").glob("*/artifact/model.pt"))
    new_model = next((shared / "train").glob("*/artifact/model.pt"))
    a, b = torch.load(ref_model), torch.load(new_model)
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    if backbone:
        assert set(a) == kept | {FROZEN_FINGERPRINT}  # model.pt holds what the checkpoint does, and the fingerprint
    for task in reference:
        for k in ("R@1", "R@5", "R@10", "MRR@10"):
            assert resumed[task][k] == reference[task][k]
    ranks = lambda run: {t: v["rank"] for t, v in json.loads((tmp_path / run / "per_query.json").read_text()).items()}
    assert ranks("run") == ranks("ref_run")  # every query's first hit where it was
