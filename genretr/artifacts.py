"""Content-addressed stage artifacts (DESIGN.md, "five stages, one artifact each").

Every stage output lives at `<cache>/<stage>/<key>/artifact/`, where `key` hashes the
config that produced it, the fingerprint of the code that produced it (`genretr.fingerprint`)
and the keys of its upstream stages.  The artifact is written into a temporary sibling and
renamed into place, so it either exists whole or not at all; reruns skip finished stages and
sweeps share upstream work.  A stage that needs scratch space that survives a kill (training
checkpoints) gets `<key>/work/`, removed once the artifact is written (no run resumes from it then).

Runs that share a cache take turns: `produce` holds an inter-process lock per (stage, key)
(`<cache>/<stage>/.<key>.lock`, filelock) while it writes, so a second run producing the same
artifact waits, then reuses it.  Under the lock, what killed writers left in the key dir (temp
dirs) is removed first.  Ranks other than 0 of a distributed run write beside their rank 0,
which holds the lock (taking it would wait for the rank 0 that waits for them in the fit).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from genretr.errors import GenretrError

log = logging.getLogger(__name__)
TMP_PREFIX = ".artifact."
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK")  # set by distributed launchers only (torchrun, Lightning)
# Set for every task of a cluster job, distributed or not (`srun -n 4` of four independent runs): a rank
# only when the run itself is distributed (the trainer asks for several processes).
CLUSTER_RANK_VARIABLES = ("SLURM_PROCID", "JSM_NAMESPACE_RANK")


def config_key(*parts) -> str:
    """A short stable hash of configs (DictConfig/dict/str) and upstream keys."""
    def plain(x):
        if isinstance(x, DictConfig):
            return OmegaConf.to_container(x, resolve=True)
        return x

    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def plain_dict(cfg) -> dict:
    """A config node (DictConfig, resolved) or mapping as a plain dict."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def secondary_rank(distributed: bool = False) -> bool:
    """Whether this process is a rank other than 0 of a distributed run (the variables Lightning and
    torchrun set; NODE_RANK for the first process of another node; SLURM's and LSF's task ids when
    `distributed`, i.e. the run's trainer spans several processes)."""
    names = RANK_VARIABLES + (CLUSTER_RANK_VARIABLES if distributed else ())
    return any(os.environ.get(v, "0").strip() not in ("", "0") for v in names)


def _tmp_name() -> str:
    """A temp dir name that says who writes it: `.artifact.<host>.<pid>.<random>.tmp`."""
    return f"{TMP_PREFIX}{socket.gethostname().replace('.', '-')}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def _writer_alive(tmp_name: str) -> bool:
    """Whether the process that named a temp dir still runs (only answerable on this host: elsewhere, yes)."""
    parts = tmp_name[len(TMP_PREFIX):].split(".")
    if len(parts) != 4 or not parts[1].isdigit():  # an older unnamed temp dir: its writer took no lock
        return False
    if parts[0] != socket.gethostname().replace(".", "-"):
        return True
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class MissingArtifact(GenretrError):
    """A read-only store (`ArtifactStore.read_only`: genretr.search reading a finished run) lacks an artifact."""

    def __init__(self, stage: str, path: Path):
        super().__init__(f"the {stage} artifact {path} is not in the cache")
        self.stage, self.path = stage, path


class ArtifactStore:
    def __init__(self, root: str | Path, distributed: bool = False):
        """`distributed`: this run's trainer spans several processes (see `secondary_rank`).  `read_only`
        (set it after): `produce` returns existing artifacts and raises `MissingArtifact` for the others."""
        self.root = Path(root).expanduser().resolve()
        self.distributed = bool(distributed)
        self.read_only = False

    def dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def artifact(self, stage: str, key: str) -> Path:
        return self.dir(stage, key) / "artifact"

    def work(self, stage: str, key: str) -> Path:
        p = self.dir(stage, key) / "work"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def done(self, stage: str, key: str) -> bool:
        return self.artifact(stage, key).is_dir()

    def lock_path(self, stage: str, key: str) -> Path:
        """The lock file of (stage, key), beside the key dir (it stays: waiters must share its inode)."""
        return self.root / stage / f".{key}.lock"

    @contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """Hold (stage, key) against other processes; says once when another run holds it."""
        path = self.lock_path(stage, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("stage %s: waiting for another run producing %s (lock %s)", stage, self.dir(stage, key), path)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def clean(self, stage: str, key: str) -> list[Path]:
        """Remove the temp dirs killed writers left in the key dir, and the key dir if that leaves it empty.
        Call it holding `lock(stage, key)`: a temp dir of a live writer (a DDP rank's) is kept."""
        d, removed = self.dir(stage, key), []
        if d.is_dir():
            for tmp in d.glob(f"{TMP_PREFIX}*.tmp"):
                if tmp.is_dir() and not _writer_alive(tmp.name):
                    shutil.rmtree(tmp, ignore_errors=True)
                    removed.append(tmp)
            try:
                d.rmdir()  # only when empty
            except OSError:
                pass
        if removed:
            log.info("stage %s: removed %d temp dir(s) of killed runs in %s", stage, len(removed), d)
        return removed

    def produce(self, stage: str, key: str, writer: Callable[[Path], None], meta: dict | None = None) -> Path:
        """Return the artifact dir, running `writer(tmp_dir)` and renaming it in place if missing (holding the
        (stage, key) lock, so that concurrent runs write it once)."""
        final = self.artifact(stage, key)
        if final.is_dir():
            log.info("stage %s: reusing %s", stage, final)
            return final
        if self.read_only:
            raise MissingArtifact(stage, final)
        if secondary_rank(self.distributed):
            return self._write(stage, key, writer, meta)
        with self.lock(stage, key):
            if final.is_dir():  # another run wrote it while this one waited
                log.info("stage %s: reusing %s", stage, final)
                return final
            self.clean(stage, key)
            try:
                path = self._write(stage, key, writer, meta)
            except BaseException:
                self.clean(stage, key)  # the key dir, if nothing else is in it
                raise
            shutil.rmtree(self.dir(stage, key) / "work", ignore_errors=True)  # its checkpoints: no run resumes now
            return path

    def _write(self, stage: str, key: str, writer: Callable[[Path], None], meta: dict | None) -> Path:
        final = self.artifact(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / _tmp_name()
        tmp.mkdir()
        try:
            writer(tmp)
            if meta is not None:
                (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
            try:
                os.rename(tmp, final)
            except OSError:  # another rank of this run finished the same artifact first
                if not final.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("stage %s: wrote %s", stage, final)
        return final
