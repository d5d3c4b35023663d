"""The encode stage's artifact: every item's and every query's vector, looked up by id.  On disk (`save`):
`item_vecs.npy` and `query_vecs.npy` (float32), memory-mapped when loaded, and the ids in `ids.json`."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class Embeddings:
    item_ids: list[str]
    item_vecs: torch.Tensor   # (items, dim)
    query_ids: list[str]
    query_vecs: torch.Tensor  # (queries, dim)

    def __post_init__(self):
        self._item_index = {k: i for i, k in enumerate(self.item_ids)}
        self._query_index = {k: i for i, k in enumerate(self.query_ids)}

    def items(self, ids) -> torch.Tensor:
        return self.item_vecs[[self._item_index[i] for i in ids]]

    def queries(self, ids) -> torch.Tensor:
        return self.query_vecs[[self._query_index[i] for i in ids]]

    def save(self, path: Path) -> None:
        path = Path(path)
        for name in ("item_vecs", "query_vecs"):
            np.save(path / f"{name}.npy", getattr(self, name).detach().float().cpu().numpy())
        (path / "ids.json").write_text(json.dumps({"item_ids": self.item_ids, "query_ids": self.query_ids}))

    @classmethod
    def load(cls, path: Path) -> "Embeddings":
        """The saved vectors, memory-mapped copy-on-write: a run reads the rows it looks up."""
        path = Path(path)
        ids = json.loads((path / "ids.json").read_text())
        vecs = {name: torch.from_numpy(np.load(path / f"{name}.npy", mmap_mode="c"))
                for name in ("item_vecs", "query_vecs")}
        return cls(ids["item_ids"], vecs["item_vecs"], ids["query_ids"], vecs["query_vecs"])
