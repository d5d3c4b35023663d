"""The dataset stage (DESIGN.md): the configured dataset built once and kept as an artifact: its metadata
pickled (`dataset.pkl`, no pixels) and its images in one uint8 `.npy` file, memory-mapped when read, so a run
holds in memory only the pages it touches (issue 16)."""
from __future__ import annotations

import logging
import pickle
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from hydra.utils import instantiate

from genretr.data.images import write_images
from genretr.data.schema import RetrievalDataset
from genretr.stages import keys

if TYPE_CHECKING:  # stages read the run's context; only genretr.pipeline makes one
    from genretr.stages.context import RunContext

log = logging.getLogger(__name__)


def run(ctx: RunContext) -> RetrievalDataset:
    cfg = ctx.cfg.dataset
    key = ctx.keys["dataset"] = keys.dataset(ctx)

    def write(tmp: Path):
        ds = instantiate(cfg, _convert_="all")
        (tmp / "summary.txt").write_text(ds.summary() + "\n")
        save(ds, tmp)

    ds = load(ctx.store.produce("dataset", key, write))
    log.info("%s", ds.summary())
    return ds


def save(ds: RetrievalDataset, path: Path) -> None:
    """`images.npy` (the pixels, decoded a file at a time from `ImageFiles`) and `dataset.pkl` (everything
    else) under `path`."""
    write_images(ds.images, path / "images.npy", ds.name)
    with open(path / "dataset.pkl", "wb") as f:
        pickle.dump(replace(ds, images=np.zeros((0, *ds.images.shape[1:]), np.uint8)), f,
                    protocol=pickle.HIGHEST_PROTOCOL)


def load(path: Path) -> RetrievalDataset:
    """The saved dataset, its images memory-mapped copy-on-write (never written back); passes over them read the
    file instead (`genretr.data.mapped`), so a run must not write into them."""
    with open(path / "dataset.pkl", "rb") as f:
        ds = pickle.load(f)
    ds.images = np.load(path / "images.npy", mmap_mode="c")
    return ds
