"""Shared fixtures: compose genretr's Hydra config outside `python -m genretr.run`."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import genretr  # noqa: F401  (offline environment)

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = ["debug=tiny", "logger=none"]
MACHINE_CORES: set[int] = set()  # the cores this test session may use, before a worker is pinned to its share


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs `-n auto`), each worker runs on its own share of the cores, and the
    processes it starts inherit that share: `threads=auto`, torch and faiss then see one core per worker on a
    2-core machine, so two workers never oversubscribe it (two threads per process while another process uses
    the other core runs up to 10x slower)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    MACHINE_CORES.update(os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1))
    if not worker or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < count:
        return
    share = allowed[int(worker.removeprefix("gw")) % count::count]
    os.sched_setaffinity(0, share)
    torch.set_num_threads(len(share))


def compose_cfg(overrides: list[str], run_dir: Path, cache_dir: Path):
    """Compose conf/config.yaml with the Hydra runtime values a real run would have."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.cwd = str(Path.cwd())
        cfg.hydra.job.num = 0
        cfg.paths.cache_dir = str(cache_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


# The longest test files, longest first (their summed durations in `pytest --durations=0` on a 2-core AVX2-only
# machine, with `minilm_batches_once`; update the list when a file grows): `make test` hands out whole files in
# collection order (pytest-xdist `--dist loadfile --no-loadscope-reorder`; without that flag xdist orders files by
# their number of tests), and a long file started last leaves the other worker idle at the end.
LONGEST_FIRST = ("test_sweeps.py", "test_run_cli.py", "test_inspect_run.py", "test_golden_results.py",
                 "test_pipeline_variants.py", "test_ddp.py", "test_encode_stage.py", "bench/test_bench_quick.py",
                 "decoding/test_engine_bf16.py", "test_pipeline.py", "test_validate.py",
                 "bench/test_bench_stability.py", "test_presets_real_data.py", "test_rationale.py", "test_configs.py",
                 "test_device.py", "test_provenance.py", "backbones/test_mllm_identifier_vocab.py",
                 "evaluation/test_multilingual.py", "backbones/test_mllm_checkpoints.py", "data/test_tiny_datasets.py",
                 "bench/test_bench_training.py")


def pytest_collection_modifyitems(config, items):
    order = {f"tests/{name}": i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(item.nodeid.split("::")[0], len(order)))  # stable: the rest as collected


@pytest.fixture(scope="session", autouse=True)
def minilm_batches_once():
    """Each distinct batch of texts goes through MiniLM once per test process: the pipeline tests' tiny shapes
    runs each featurise the same 419 texts (~6 s of a 2-core machine each: 41 runs, a quarter of the suite's CPU
    time, measured at e3de6e9).  MiniLM is frozen and its pass deterministic for one batch, dtype, device and
    thread count, so a remembered batch is the batch computed again, bit for bit; everything around `_embed`
    (loading the weights, shards, the text-features stage and its cache) runs as in a real run."""
    from genretr.encoders.towers import MiniLMText

    embed, remembered = MiniLMText._embed, {}

    @functools.wraps(embed)  # the real pass stays reachable as `MiniLMText._embed.__wrapped__`
    def embed_once(self, tok, model, texts, device, dtype):
        weights = (getattr(model.config, "_name_or_path", None), next(model.parameters()).dtype)
        key = (str(self.model_path()), weights, str(device), dtype, torch.get_num_threads(), tuple(texts))
        if key not in remembered:
            remembered[key] = embed(self, tok, model, texts, device, dtype)
        return remembered[key].clone()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MiniLMText, "_embed", embed_once)
        yield


@pytest.fixture
def machine_cores() -> set[int]:
    """The cores this test session may use (`make test` pins each xdist worker to a share of them)."""
    return set(MACHINE_CORES)


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(*overrides, cache=None, run='run') → composed tiny config writing under tmp_path."""
    def make(*overrides, cache: Path | None = None, run: str = "run"):
        run_dir = tmp_path / run
        run_dir.mkdir(parents=True, exist_ok=True)
        return compose_cfg([*TINY, *overrides], run_dir, cache or tmp_path / "cache")

    return make


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is far faster than two contending ones on a busy box.  A module opts in
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
