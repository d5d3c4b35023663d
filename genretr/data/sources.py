"""The files a dataset config names exist: checked by `genretr.run` before any stage runs.

A dataset adapter module may define `source_paths(**dataset_config) -> {config key: (path, kind)}`,
kind "file" or "directory": the inputs its builder reads first (karpathy, mbeir, precomputed do).
`check_sources` stops a run whose input is absent with one line naming the path and the config key,
seconds after the command instead of after Lightning's import and the stages before the dataset's.
"""
from __future__ import annotations

import importlib
import os

from omegaconf import DictConfig, OmegaConf

from genretr.errors import DataError

EXISTS = {"file": os.path.isfile, "directory": os.path.isdir}


def check_sources(dataset_cfg: DictConfig | None) -> None:
    """Raise `DataError` on the first input of `dataset_cfg` that is not on this machine."""
    target = str(dataset_cfg.get("_target_") or "") if dataset_cfg is not None else ""
    if "." not in target:
        return
    try:
        module = importlib.import_module(target.rsplit(".", 1)[0])
    except ImportError:
        return  # Hydra's instantiate names the missing target
    source_paths = getattr(module, "source_paths", None)
    if source_paths is None:
        return
    options = OmegaConf.to_container(dataset_cfg, resolve=True)
    options.pop("_target_", None)
    for key, (path, kind) in source_paths(**options).items():
        if not EXISTS[kind](path):
            there = " (a file is there)" if kind == "directory" and os.path.isfile(path) else \
                " (a directory is there)" if kind == "file" and os.path.isdir(path) else ""
            raise DataError(path, None, f"{kind} not found{there} (dataset.{key}; nothing is downloaded: see the "
                                        "dataset's config for where to get it, or set GENRETR_DATA)")
