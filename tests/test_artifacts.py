"""genretr.artifacts: config keys, produce-once artifacts, atomic writes."""
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from genretr.artifacts import ArtifactStore, atomic_write_text, config_key

CFG = {"name": "shapes", "seed": 0, "splits": {"train": 10, "test": 5}, "lr": 1e-3, "tags": ["a", "b"]}


def test_config_key_is_stable_and_short():
    k = config_key(CFG, "upstream1")
    assert k == config_key(dict(CFG), "upstream1")
    assert len(k) == 12 and all(c in "0123456789abcdef" for c in k)
    # key order inside a dict does not matter
    assert config_key(dict(reversed(list(CFG.items()))), "upstream1") == k
    # the hash is content-based (no id()/hash() salt): the same in a fresh process
    import subprocess
    import sys
    code = "from genretr.artifacts import config_key; print(config_key({'b': [1, 2], 'a': {'x': 1.5}}, 'u'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123",
                                              "PYTHONPATH": str(Path(__file__).resolve().parents[1])}).stdout.strip()
    assert out == config_key({"a": {"x": 1.5}, "b": [1, 2]}, "u")


def test_config_key_dict_and_dictconfig_agree():
    assert config_key(OmegaConf.create(CFG), "u") == config_key(CFG, "u")
    # interpolations are resolved before hashing
    interp = OmegaConf.create({"seed": 0, "copy": "${seed}"})
    assert config_key(interp) == config_key({"seed": 0, "copy": 0})


@pytest.mark.parametrize("change", [
    lambda c: c.update(seed=1),
    lambda c: c.update(lr=2e-3),
    lambda c: c["splits"].update(test=6),
    lambda c: c.update(tags=["b", "a"]),
    lambda c: c.update(extra=None),
    lambda c: c.pop("name"),
])
def test_config_key_is_sensitive_to_changes(change):
    import copy
    c = copy.deepcopy(CFG)
    change(c)
    assert config_key(c, "u") != config_key(CFG, "u")


def test_config_key_depends_on_upstream_keys_and_their_order():
    base = config_key(CFG, "k1", "k2")
    assert config_key(CFG, "k1", "k3") != base
    assert config_key(CFG, "k2", "k1") != base
    assert config_key(CFG, "k1") != base
    assert config_key("a") != config_key("b")


def test_config_key_accepts_paths():
    assert config_key({"p": Path("/x/y")}) == config_key({"p": "/x/y"})


def test_produce_runs_writer_once_and_reuses(tmp_path):
    store = ArtifactStore(tmp_path / "cache")
    calls = []

    def writer(d: Path):
        calls.append(d)
        assert d.is_dir() and d.name.startswith(".artifact.")
        (d / "out.txt").write_text("hello")

    assert not store.done("ident", "k1")
    p = store.produce("ident", "k1", writer, meta={"seed": 0})
    assert p == store.artifact("ident", "k1") == tmp_path.resolve() / "cache" / "ident" / "k1" / "artifact"
    assert (p / "out.txt").read_text() == "hello"
    assert '"seed": 0' in (p / "meta.json").read_text()
    assert store.done("ident", "k1")
    p2 = store.produce("ident", "k1", writer)
    assert p2 == p and len(calls) == 1
    assert sorted(os.listdir(store.dir("ident", "k1"))) == ["artifact"]
    # another key is another artifact
    store.produce("ident", "k2", writer)
    assert len(calls) == 2 and store.done("ident", "k2")


def test_failing_writer_leaves_nothing_behind(tmp_path):
    store = ArtifactStore(tmp_path)

    def writer(d: Path):
        (d / "half.txt").write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.produce("train", "k", writer)
    assert not store.done("train", "k")
    assert not store.dir("train", "k").exists()  # no temp dir left, nor the empty key dir

    def interrupted(d: Path):
        raise KeyboardInterrupt

    store.work("train", "k")  # a checkpoint dir of the failed fit stays, for the next run to resume from
    with pytest.raises(KeyboardInterrupt):
        store.produce("train", "k", interrupted)
    assert [p.name for p in store.dir("train", "k").iterdir()] == ["work"]

    # a later successful run still works
    store.produce("train", "k", lambda d: (d / "ok").write_text("1"))
    assert (store.artifact("train", "k") / "ok").read_text() == "1"
    assert sorted(os.listdir(store.dir("train", "k"))) == ["artifact"]  # the work dir went with the artifact


def test_work_dir_survives_a_kill_and_goes_when_the_artifact_is_written(tmp_path):
    store = ArtifactStore(tmp_path)
    w = store.work("train", "k")
    assert w.is_dir() and w == store.dir("train", "k") / "work"
    (w / "ckpt").write_text("x")
    with pytest.raises(KeyboardInterrupt):
        store.produce("train", "k", lambda d: (_ for _ in ()).throw(KeyboardInterrupt))
    assert (store.work("train", "k") / "ckpt").read_text() == "x"  # for the next run to resume from
    store.produce("train", "k", lambda d: (d / "model.pt").write_text("m"))
    assert store.done("train", "k") and not (store.dir("train", "k") / "work").exists()


def test_store_root_expands_user(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ArtifactStore("~/c").root == (tmp_path / "c").resolve()


def test_atomic_write_text(tmp_path):
    f = tmp_path / "report.md"
    atomic_write_text(f, "one")
    assert f.read_text() == "one"
    atomic_write_text(str(f), "two")  # str paths work, existing files are replaced
    assert f.read_text() == "two"
    assert os.listdir(tmp_path) == ["report.md"]  # no temp file left
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "missing_dir" / "x.txt", "y")
    assert os.listdir(tmp_path) == ["report.md"]


# -- runs sharing one cache: a lock per (stage, key); leftovers of killed runs --------------------------------
def _produce_in_child(root: str, role: str, signals: str):
    """One run's `produce` of ("train", "k") in a spawned process: the writer counts its calls in
    signals/writes; the first run's writer holds on until the second run is about to produce."""
    import logging
    import time

    from genretr.artifacts import ArtifactStore

    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("genretr.artifacts").addHandler(handler)
    logging.getLogger("genretr.artifacts").setLevel(logging.INFO)
    signals = Path(signals)

    def writer(d: Path):
        with open(signals / "writes", "a") as f:
            f.write(f"{role}\n")
        (signals / "writing").touch()
        deadline = time.monotonic() + 60
        while not (signals / "second_ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # the second run is inside produce by now
        (d / "out.txt").write_text(role)

    if role == "second":
        (signals / "second_ready").touch()
    path = ArtifactStore(root).produce("train", "k", writer)
    return str(path), (path / "out.txt").read_text(), messages


def test_concurrent_runs_write_an_artifact_once(tmp_path):
    import multiprocessing as mp
    import time

    ctx = mp.get_context("spawn")
    signals = tmp_path / "signals"
    signals.mkdir()
    with ctx.Pool(2) as pool:
        first = pool.apply_async(_produce_in_child, (str(tmp_path / "cache"), "first", str(signals)))
        deadline = time.monotonic() + 120
        while not (signals / "writing").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (signals / "writing").exists(), "the first run's writer never started"
        second = pool.apply_async(_produce_in_child, (str(tmp_path / "cache"), "second", str(signals)))
        (p1, out1, log1), (p2, out2, log2) = first.get(timeout=120), second.get(timeout=120)
    assert (signals / "writes").read_text() == "first\n"  # exactly one writer ran
    assert p1 == p2 and out1 == out2 == "first"  # both got the first run's artifact
    assert any("waiting for another run" in m for m in log2), log2
    assert any("reusing" in m for m in log2) and not any("waiting" in m for m in log1)
    assert sorted(os.listdir(tmp_path / "cache" / "train" / "k")) == ["artifact"]


def test_leftovers_of_killed_runs_are_removed_when_the_key_is_next_produced(tmp_path):
    import socket

    store = ArtifactStore(tmp_path)
    key_dir = store.dir("train", "k")
    host = socket.gethostname().replace(".", "-")
    old_style = key_dir / ".artifact.0123abcd.tmp"  # a writer without a lock (older genretr)
    dead = key_dir / f".artifact.{host}.999999999.0123abcd.tmp"  # no such process
    live = key_dir / f".artifact.{host}.{os.getpid()}.0123abcd.tmp"  # a live writer (a DDP rank beside us)
    for d in (old_style, dead, live):
        d.mkdir(parents=True)
    (dead / "half.pt").write_text("partial")
    (store.work("train", "k") / "last.ckpt").write_text("resume me")
    store.produce("train", "k", lambda d: (d / "ok").write_text("1"))
    assert sorted(os.listdir(key_dir)) == sorted(["artifact", live.name])

    # an empty key dir a killed run left is removed; so is the one a failing writer leaves
    (store.dir("identify", "gone") / ".artifact.0123abcd.tmp").mkdir(parents=True)
    with pytest.raises(RuntimeError):
        store.produce("identify", "gone", lambda d: (_ for _ in ()).throw(RuntimeError("boom")))
    assert not store.dir("identify", "gone").exists()


def test_other_ranks_of_a_distributed_run_do_not_wait_for_rank_zero(tmp_path, monkeypatch):
    """Lightning's DDP launcher starts ranks 1.. while rank 0 holds the lock in its fit: they write beside it."""
    import threading

    from filelock import FileLock

    from genretr.artifacts import RANK_VARIABLES

    for v in RANK_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    store = ArtifactStore(tmp_path)
    held = FileLock(str(store.lock_path("encode", "k")))  # rank 0, producing
    store.lock_path("encode", "k").parent.mkdir(parents=True)
    held.acquire()
    try:
        monkeypatch.setenv("LOCAL_RANK", "1")
        done = []
        t = threading.Thread(target=lambda: done.append(store.produce("encode", "k", lambda d: None)), daemon=True)
        t.start()
        t.join(30)
        assert done == [store.artifact("encode", "k")]
        monkeypatch.setenv("LOCAL_RANK", "0")
        t = threading.Thread(target=lambda: done.append(store.produce("encode", "other", lambda d: None)), daemon=True)
        held_other = FileLock(str(store.lock_path("encode", "other")))
        held_other.acquire()
        t.start()
        t.join(1.0)
        assert t.is_alive()  # rank 0 of another run waits for the lock
        held_other.release()
        t.join(30)
        assert done[-1] == store.artifact("encode", "other")
    finally:
        held.release()


# -- runs started together: one Hydra output dir each (genretr.resolvers) --------------------------------------
def _compose_hydra(overrides=()):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import genretr  # noqa: F401  (registers ${run_id:})

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_runs_started_in_the_same_second_get_their_own_dirs():
    import re

    first, second = _compose_hydra(), _compose_hydra()
    assert first.hydra.run.dir == first.hydra.run.dir  # one value per run, however often it is read
    assert first.hydra.run.dir != second.hydra.run.dir
    assert first.hydra.sweep.dir != second.hydra.sweep.dir
    for cfg in (first, second):
        m = re.fullmatch(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-(\d{6})-(\d+)", cfg.hydra.run.dir)
        assert m and int(m.group(2)) == os.getpid(), cfg.hydra.run.dir
        assert re.fullmatch(r"multirun/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6}-\d+", cfg.hydra.sweep.dir)


def test_multirun_jobs_share_the_sweep_dir():
    """Hydra's launchers give each job the sweep config's resolver cache (in a worker process, pickled)."""
    import pickle

    from omegaconf import OmegaConf

    master = _compose_hydra()
    sweep_dir = str(master.hydra.sweep.dir)
    job = _compose_hydra(["seed=1"])
    OmegaConf.copy_cache(from_config=master, to_config=job)  # what Hydra's load_sweep_config does
    assert pickle.loads(pickle.dumps(job)).hydra.sweep.dir == sweep_dir


def test_cluster_task_ids_are_ranks_only_of_a_distributed_run(monkeypatch):
    """`srun -n 4` of four independent runs sets SLURM_PROCID 0..3: those must still take the stage locks;
    in a run whose trainer spans several processes, a task id other than 0 is a secondary rank."""
    from genretr.artifacts import CLUSTER_RANK_VARIABLES, RANK_VARIABLES, secondary_rank
    from genretr.stages.context import processes

    for v in RANK_VARIABLES + CLUSTER_RANK_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "2")
    assert not secondary_rank() and secondary_rank(distributed=True)
    assert not ArtifactStore("x").distributed
    assert processes({"devices": 1}) == 1 and processes({"devices": 2, "num_nodes": 2}) == 4
    assert processes({"devices": "0,1"}) == 2 and processes({"devices": [0, 1, 2]}) == 3
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert secondary_rank()
