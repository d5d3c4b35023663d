"""`python -m genretr.run` as a user types it: help, config printing, clear errors, loggers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=ROOT, env=None, timeout=300, preexec_fn=None):
    """`python -m genretr.run *args`; `env` values replace the environment's (None: unset)."""
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    e = {k: v for k, v in e.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "genretr.run", *args], cwd=cwd, env=e, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=preexec_fn)


def test_help_lists_groups():
    out = run("--help")
    assert out.returncode == 0
    for group in ("dataset", "encoder", "identifier", "backbone", "trainer", "logger", "experiment"):
        assert f"{group}:" in out.stdout


def test_cfg_job_prints_config():
    out = run("--cfg", "job", "identifier=string")
    assert out.returncode == 0 and "_target_: genretr.identifiers.string.StringIdentifier" in out.stdout


def test_missing_dataset_file_is_one_line_and_exit_2(tmp_path):
    out = run("dataset=flickr30k", f"dataset.json_path={tmp_path}/nope.json", f"paths.cache_dir={tmp_path}/cache",
              f"hydra.run.dir={tmp_path}/run", "logger=none")
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and f"{tmp_path}/nope.json: file not found (dataset.json_path;" in lines[0], out.stderr
    assert not (tmp_path / "cache").exists(), "a stage ran"  # genretr.data.sources checks before any stage
    assert not (tmp_path / "run" / "results.json").exists()


def no_wandb_key(tmp_path) -> dict:
    """An environment with no W&B credentials: a temp HOME (no ~/.netrc), no key variables, no WANDB_MODE."""
    (tmp_path / "home").mkdir(exist_ok=True)
    return {"HOME": str(tmp_path / "home"), "WANDB_API_KEY": None, "WANDB_IDENTITY_TOKEN_FILE": None, "NETRC": None,
            "WANDB_MODE": None, "WANDB_BASE_URL": None}


REFUSED = {  # configs users ran that failed only after stages had run: overrides, message part
    "num_beams not a number": (["decoding.num_beams=abc"], "decoding.num_beams=abc is not an integer >= 1"),
    "unknown task, generative": (["eval.tasks=[x2y]"], "eval.tasks=[x2y]: x2y is not a task"),
    "test-only M-BEIR": (["dataset=mbeir", "~dataset.splits.train"], "dataset.splits has no train split"),
    "W&B online without a key": (["logger=wandb", "logger.offline=false"], "no API key"),
    "MLLM weights absent": (["identifier=ssid", "backbone=qwen25vl", "backbone.model.pretrained=/nonexistent/qwen"],
                            "backbone qwen25vl: no weights at '/nonexistent/qwen'"),
    "T5 weights absent": (["backbone.model.pretrained=/nonexistent/t5"],
                          "backbone.model.pretrained=/nonexistent/t5: no T5 checkpoint there"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_config_is_one_line_before_any_stage(case, tmp_path):
    overrides, expected = REFUSED[case]
    logger = [] if any(o.startswith("logger=") for o in overrides) else ["logger=none"]
    out = run("debug=tiny", *logger, *overrides, f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run",
              env=no_wandb_key(tmp_path))
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("genretr: error: ") and expected in lines[0], out.stderr
    assert not (tmp_path / "cache").exists(), "a stage ran"
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "wandb").exists()


@pytest.mark.parametrize("overrides", [["stage=encode"], ["method=embedding"]])
def test_absent_backbone_weights_stop_only_runs_that_build_the_backbone(overrides, make_cfg, tmp_path):
    """The weights are checked where the run builds the backbone (`Pipeline.check_weights`); the same config
    through `genretr.run` stops with one line (`test_bad_config_is_one_line_before_any_stage`)."""
    from genretr.run import execute

    cfg = make_cfg("identifier=ssid", "backbone=qwen25vl", "backbone.model.pretrained=/nonexistent", *overrides)
    metrics = execute(cfg, tmp_path / "run")
    assert (metrics is None) == (overrides == ["stage=encode"])


def test_bad_stage_name_is_a_clear_error(tmp_path):
    out = run("stage=bogus", f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run", "logger=none")
    assert out.returncode == 2 and "stage=bogus" in out.stderr


def test_tiny_run_with_csv_logger_writes_everything(tmp_path):
    out = run("debug=tiny", f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = tmp_path / "run"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["choices"]["identifier"] == "string" and "debug=tiny" in results["overrides"]
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "run.log").is_file()
    metrics_csv = (run_dir / "logs" / "metrics.csv").read_text()
    assert "test/t2i/R@10" in metrics_csv and "decoder/loss" in metrics_csv


def test_wandb_logger_offline_never_blocks(tmp_path):
    """logger=wandb alone logs offline: no WANDB_MODE, no key anywhere."""
    out = run("debug=tiny", "logger=wandb", f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run",
              env=no_wandb_key(tmp_path), timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert list((tmp_path / "run").rglob("offline-run-*")), "no offline W&B run was written"


def test_jobs_side_by_side_take_one_share_of_the_cores_each(tmp_path, machine_cores):
    """hydra/launcher=parallel with n_jobs=2 and threads=auto (the default): each job gets cores // 2 torch
    threads (one each on a 2-core machine), recorded in its results.json.  The sweep runs on every core of the
    machine, not on the one core `make test` pins this worker to, where every share would be one thread anyway
    (a single run's share: `test_how_many_jobs_run_side_by_side`, `tests/test_hardware.py`)."""
    every_core = machine_cores
    sweep = tmp_path / "sweep"
    out = run("-m", "debug=tiny", "method=embedding", "seed=0,1", "hydra/launcher=parallel",
              "hydra.launcher.n_jobs=2", "logger=none", f"paths.cache_dir={tmp_path}/cache",
              f"hydra.sweep.dir={sweep}", env={"OMP_NUM_THREADS": None},
              preexec_fn=lambda: os.sched_setaffinity(0, every_core))
    assert out.returncode == 0, out.stderr[-2000:]
    threads = [json.loads((sweep / str(n) / "results.json").read_text())["provenance"]["torch_threads"]
               for n in (0, 1)]
    assert threads == [max(1, len(every_core) // 2)] * 2


@pytest.mark.parametrize("launcher, jobs", [(None, 1), ({"_target_": "hydra_plugins.hydra_joblib_launcher."
                                                                     "joblib_launcher.JoblibLauncher", "n_jobs": 2}, 2),
                                            ({"_target_": "x.JoblibLauncher", "n_jobs": -1}, "cores")])
def test_how_many_jobs_run_side_by_side(launcher, jobs, monkeypatch):
    """How many jobs run side by side: 1 for a single run (which then takes every core), joblib's n_jobs in a
    parallel sweep (-1: one per core)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    import genretr.hardware
    from genretr.run import _jobs_side_by_side

    monkeypatch.setattr(genretr.hardware, "cores", lambda: 6)
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: launcher is not None))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: OmegaConf.create({"launcher": launcher or {}})))
    assert _jobs_side_by_side() == (6 if jobs == "cores" else jobs)


def test_training_processes_share_the_cores_and_keep_their_count_through_the_run(make_cfg, tmp_path, monkeypatch):
    """trainer.devices=2 (DDP: a process a device) shares the cores between the two, and exports the count as
    OMP_NUM_THREADS: where it is unset, Lightning's DDP launcher sets cores / processes at the first fit, so the
    count the trained stages' keys hold changed mid-run and a rerun trained identify and train again."""
    import torch

    import genretr.hardware
    from genretr.run import execute

    monkeypatch.setattr(genretr.hardware, "cores", lambda: 6)
    monkeypatch.setenv("OMP_NUM_THREADS", "0")  # recorded, so that the test's export is undone after it
    monkeypatch.delenv("OMP_NUM_THREADS")
    before = torch.get_num_threads()
    try:
        assert execute(make_cfg("trainer.devices=2", "stage=dataset"), tmp_path / "run") is None
        assert torch.get_num_threads() == 3 and os.environ["OMP_NUM_THREADS"] == "3"
        os.environ.pop("OMP_NUM_THREADS")
        execute(make_cfg("stage=dataset"), tmp_path / "one")  # one process: nothing to export
        assert torch.get_num_threads() == 6 and "OMP_NUM_THREADS" not in os.environ
    finally:
        torch.set_num_threads(before)
