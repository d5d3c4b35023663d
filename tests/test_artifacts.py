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
    assert not store.artifact("train", "k").exists()
    assert list(store.dir("train", "k").iterdir()) == []  # no temp dir left

    def interrupted(d: Path):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.produce("train", "k", interrupted)
    assert list(store.dir("train", "k").iterdir()) == []

    # a later successful run still works
    store.produce("train", "k", lambda d: (d / "ok").write_text("1"))
    assert (store.artifact("train", "k") / "ok").read_text() == "1"
    assert sorted(os.listdir(store.dir("train", "k"))) == ["artifact"]


def test_work_dir_is_separate_and_persistent(tmp_path):
    store = ArtifactStore(tmp_path)
    w = store.work("train", "k")
    assert w.is_dir() and w == store.dir("train", "k") / "work"
    (w / "ckpt").write_text("x")
    store.produce("train", "k", lambda d: None)
    assert (store.work("train", "k") / "ckpt").read_text() == "x"
    assert store.done("train", "k")


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
