"""Content-addressed stage artifacts (DESIGN.md, "five stages, one artifact each").

Every stage output lives at `<cache>/<stage>/<key>/artifact/`, where `key` hashes the
config that produced it together with the keys of its upstream stages.  The artifact is
written into a temporary sibling and renamed into place, so it either exists whole or
not at all; reruns skip finished stages and sweeps share upstream work.  A stage that
needs scratch space that survives a kill (training checkpoints) gets `<key>/work/`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


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


def without_defaults(cfg, defaults: dict) -> dict:
    """`cfg` as a plain dict less the dotted keys of `defaults` that hold their default value: options
    added to a stage after its artifacts existed enter its key only when set, so the artifacts of runs
    that do not use them stay valid."""
    plain = plain_dict(cfg)
    for dotted, default in defaults.items():
        *path, leaf = dotted.split(".")
        node = plain
        for k in path:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == default:
            del node[leaf]
    return plain


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ArtifactStore:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

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

    def produce(self, stage: str, key: str, writer: Callable[[Path], None], meta: dict | None = None) -> Path:
        """Return the artifact dir, running `writer(tmp_dir)` and renaming it in place if missing."""
        final = self.artifact(stage, key)
        if final.is_dir():
            log.info("stage %s: reusing %s", stage, final)
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".artifact.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            writer(tmp)
            if meta is not None:
                (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
            try:
                os.rename(tmp, final)
            except OSError:  # another process finished the same artifact first
                if not final.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("stage %s: wrote %s", stage, final)
        return final
