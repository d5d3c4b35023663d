"""The dataset stage (DESIGN.md): the configured dataset built once and kept as an artifact."""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.utils import instantiate

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
        with open(tmp / "dataset.pkl", "wb") as f:
            pickle.dump(ds, f, protocol=pickle.HIGHEST_PROTOCOL)
        (tmp / "summary.txt").write_text(ds.summary() + "\n")

    path = ctx.store.produce("dataset", key, write)
    with open(path / "dataset.pkl", "rb") as f:
        ds = pickle.load(f)
    log.info("%s", ds.summary())
    return ds
