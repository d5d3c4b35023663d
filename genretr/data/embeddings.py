"""The encode stage's artifact: every item's and every query's vector, looked up by id.  On disk (`save`):
`item_vecs.npy` and `query_vecs.npy` (float32), memory-mapped when loaded, and the ids in `ids.json`; with
`parts`, the towers' own vectors of the rows that fuse an image and a text (`TowerParts`: `part_images.npy`,
`part_texts.npy`, their keys in `parts.json`), for a fusion of one's own (GENIUS's h(image, text))."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genretr.data.mapped import gather_rows


@dataclass
class TowerParts:
    """The image tower's vector of each listed image and the text tower's of each listed text: those of the rows
    the encoder fused (pair items, composed queries), kept unfused."""
    images: list[int]           # image indices (RetrievalDataset.images)
    image_vecs: torch.Tensor    # (len(images), dim)
    texts: list[str]
    text_vecs: torch.Tensor     # (len(texts), dim)

    def __post_init__(self):
        self._image_row = {int(i): k for k, i in enumerate(self.images)}
        self._text_row = {t: k for k, t in enumerate(self.texts)}

    def lookup(self, sides: list[tuple]) -> list[np.ndarray | None]:
        """(2, dim) image and text vectors of each (image index, text) side held here, None for the others."""
        rows = [(self._image_row.get(image) if not isinstance(image, bool) else None, self._text_row.get(text))
                for image, text in sides]
        held = [k for k, (i, t) in enumerate(rows) if i is not None and t is not None]
        out: list[np.ndarray | None] = [None] * len(sides)
        if held:  # gathered in one indexing of each tower's matrix
            images = self.image_vecs.numpy()[[rows[k][0] for k in held]]
            texts = self.text_vecs.numpy()[[rows[k][1] for k in held]]
            for j, k in enumerate(held):
                out[k] = np.stack([images[j], texts[j]])
        return out


@dataclass
class Embeddings:
    item_ids: list[str]
    item_vecs: torch.Tensor   # (items, dim)
    query_ids: list[str]
    query_vecs: torch.Tensor  # (queries, dim)
    parts: TowerParts | None = None

    def __post_init__(self):
        self._item_index = {k: i for i, k in enumerate(self.item_ids)}
        self._query_index = {k: i for i, k in enumerate(self.query_ids)}
        self._mapped: dict[str, np.ndarray] = {}  # the memory-mapped arrays behind the tensors (`load`)

    def items(self, ids) -> torch.Tensor:
        """The vectors of items `ids`, a new tensor (read through the file when loaded: `gather_rows`)."""
        return self._rows("item_vecs", [self._item_index[i] for i in ids])

    def queries(self, ids) -> torch.Tensor:
        return self._rows("query_vecs", [self._query_index[i] for i in ids])

    def _rows(self, name: str, rows: list[int]) -> torch.Tensor:
        if name in self._mapped:
            return torch.from_numpy(gather_rows(self._mapped[name], rows))
        return getattr(self, name)[rows]

    def save(self, path: Path) -> None:
        path = Path(path)
        for name in ("item_vecs", "query_vecs"):
            np.save(path / f"{name}.npy", getattr(self, name).detach().float().cpu().numpy())
        (path / "ids.json").write_text(json.dumps({"item_ids": self.item_ids, "query_ids": self.query_ids}))
        if self.parts is not None:
            np.save(path / "part_images.npy", self.parts.image_vecs.detach().float().cpu().numpy())
            np.save(path / "part_texts.npy", self.parts.text_vecs.detach().float().cpu().numpy())
            (path / "parts.json").write_text(json.dumps({"images": [int(i) for i in self.parts.images],
                                                         "texts": self.parts.texts}))

    @classmethod
    def load(cls, path: Path) -> "Embeddings":
        """The saved vectors, memory-mapped copy-on-write (a write never reaches the artifact).  `items` and
        `queries` read their rows from the files (`genretr.data.mapped`), so a pass over every item leaves none
        resident; they never see a write into `item_vecs` / `query_vecs`, which a run must not make."""
        path = Path(path)
        ids = json.loads((path / "ids.json").read_text())
        mapped = {name: np.load(path / f"{name}.npy", mmap_mode="c") for name in ("item_vecs", "query_vecs")}
        vecs = {name: torch.from_numpy(array) for name, array in mapped.items()}
        parts = None
        if (path / "parts.json").exists():
            keys = json.loads((path / "parts.json").read_text())
            parts = TowerParts(keys["images"], torch.from_numpy(np.load(path / "part_images.npy", mmap_mode="c")),
                               keys["texts"], torch.from_numpy(np.load(path / "part_texts.npy", mmap_mode="c")))
        emb = cls(ids["item_ids"], vecs["item_vecs"], ids["query_ids"], vecs["query_vecs"], parts)
        emb._mapped = mapped
        return emb
