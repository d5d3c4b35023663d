"""The encode stage's artifact: every item's and every query's vector, looked up by id."""
from __future__ import annotations

from dataclasses import dataclass

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

    def state(self) -> dict:
        return {k: getattr(self, k) for k in ("item_ids", "item_vecs", "query_ids", "query_vecs")}
