"""`python -m genretr.run [group=option ...] [key=value ...]` — one experiment, end to end.

Composes conf/config.yaml with Hydra, runs the stages (genretr.pipeline) and writes, under
Hydra's output dir: the resolved config (.hydra/), a log (run.log), `artifacts.json` and
`artifacts/` (links to each stage's artifact in the shared cache) and `results.json`.
A user error (bad input, missing weights) is one line on stderr and exit code 2.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import genretr  # noqa: F401  (sets the offline environment before transformers is imported)
from genretr.artifacts import atomic_write_text
from genretr import fingerprint
from genretr.errors import GenretrError
from genretr.evaluation.distributed import rank_zero
from genretr.provenance import git_state, provenance

log = logging.getLogger("genretr")


def _link_artifacts(pipe, run_dir: Path) -> None:
    links = {stage: str(pipe.store.artifact(stage, key)) for stage, key in pipe.keys.items()}
    atomic_write_text(run_dir / "artifacts.json", json.dumps(links, indent=2) + "\n")
    (run_dir / "artifacts").mkdir(exist_ok=True)
    for stage, target in links.items():
        link = run_dir / "artifacts" / stage
        if Path(target).exists() and not link.exists():
            link.symlink_to(target, target_is_directory=True)


def _jobs_side_by_side() -> int:
    """How many jobs of this sweep run at once on this machine: the joblib launcher's n_jobs, else 1."""
    if not HydraConfig.initialized():
        return 1
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n = int(launcher.get("n_jobs") or 1)
    if n < 0:  # joblib: -1 is one job per core, -2 all but one, ...
        from genretr.hardware import cores

        n = max(1, cores() + 1 + n)
    return n


def execute(cfg: DictConfig, run_dir: Path, extra_callbacks=()) -> dict | None:
    """Run the pipeline for `cfg`, writing into `run_dir`; returns the metrics (None if stopped early)."""
    from genretr.data.sources import check_sources
    from genretr.validate import validate

    validate(cfg)  # a bad option is one line before any stage runs, and before Lightning is imported (~4 s)
    check_sources(cfg.get("dataset"))  # so is an absent input file
    import lightning as L

    from genretr.pipeline import Pipeline

    git = git_state()  # the code this run starts from, before anyone edits or commits during it
    fingerprint.snapshot()  # and the stage keys' code fingerprints of that same code
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("lightning.pytorch", "lightning.fabric", "faiss.loader"):  # keep run.log about genretr
        logging.getLogger(name).setLevel(logging.WARNING)
    import torch

    from genretr.hardware import auto_threads
    from genretr.heap import malloc_at_ceiling
    from genretr.stages.context import processes_per_node

    # the cores are shared by the jobs of a parallel sweep and by the training processes of each (DDP: one a device)
    processes = processes_per_node(cfg.get("trainer") or {})
    threads = auto_threads(cfg.get("threads", "auto"), _jobs_side_by_side() * processes)
    torch.set_num_threads(threads)
    if processes > 1:  # Lightning's launchers set torch's count to cores / processes at the first fit unless
        # OMP_NUM_THREADS is set: the count the trained stages' keys hold changed mid-run (a rerun then trained
        # identify and train again).  Set, it leaves torch's count alone; each process sets its own (genretr.run).
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    malloc_at_ceiling()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    logger = instantiate(cfg.logger) if cfg.get("logger") and cfg.logger.get("_target_") else None
    start = time.perf_counter()
    pipe = Pipeline(cfg, run_dir, logger, extra_callbacks)
    try:
        metrics = pipe.run()
        if rank_zero():
            _link_artifacts(pipe, run_dir)
            if metrics is not None:
                hc = HydraConfig.get() if HydraConfig.initialized() else None
                results = {
                    "method": cfg.method.name,
                    "choices": {k: v for k, v in (hc.runtime.choices.items() if hc else []) if "hydra" not in k},
                    "overrides": list(hc.overrides.task) if hc else [],
                    "metrics": metrics,
                    **({"training": summary} if (summary := pipe.training_summary()) else {}),
                    "elapsed_s": round(time.perf_counter() - start, 2),
                    "provenance": provenance(cfg, pipe.stage_seconds, git, str(pipe.ctx.device)),
                }
                atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
                if logger is not None:
                    logger.log_metrics({f"test/{t}/{k}": v for t, m in metrics.items() for k, v in m.items()})
                    logger.save()
                _print_table(metrics)
    finally:
        if logger is not None and type(logger).__name__ == "WandbLogger":
            import wandb

            wandb.finish()  # one W&B run per multirun job
    return metrics


def _print_table(metrics: dict) -> None:
    cols = ["R@1", "R@5", "R@10", "MRR@10", "q_per_s"]
    print("task  " + "  ".join(f"{c:>8}" for c in cols))
    for task, m in metrics.items():
        print(f"{task:<5} " + "  ".join(f"{m.get(c, float('nan')):8.4f}" for c in cols))


def _user_error(e: BaseException) -> GenretrError | None:
    """The GenretrError behind `e` (Hydra's instantiate wraps what a constructor raises), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, GenretrError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = execute(cfg, run_dir)
    except Exception as e:
        user = _user_error(e)
        if user is None:
            raise
        print(f"genretr: error: {user}", file=sys.stderr)
        log.error("%s", user)
        sys.exit(2)
    if metrics:
        first = next(iter(metrics.values()))
        return first.get("R@10")  # for Hydra sweepers that optimise a value
    return None


if __name__ == "__main__":
    main()
