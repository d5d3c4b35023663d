"""Items added to a finished run without retraining (issue 19), kept beside it in `RUN_DIR/added/`:

* `items.json`: each added item (id, modality, text, its image's row in `images.npy` or null) and the pools
  it joined;
* `images.npy` (m, H, W, 3) uint8, `item_vecs.npy` (m, d) float32: their images and encoder vectors;
* `sequences.npy` + `idtable.json`: their identifiers (in the scheme's vocabulary), for generative runs.

The cache's artifacts and the run's results are never touched: the run reproduces as it was, and
`genretr.search` (`LoadedRun`) lays the additions over the loaded run.  The folder is rewritten whole, through
a temporary folder and a rename, at each `genretr.add`.
"""
from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genretr.data.schema import Item
from genretr.identifiers.base import IdTable

FOLDER = "added"


class StackedImages:
    """A dataset's (memory-mapped) images followed by new ones, indexed as one array without copying the first:
    what `genretr.search` and `genretr.add` give the encoder and the MLLM inputs (an int, or a list of ints)."""

    def __init__(self, base: np.ndarray, extra: np.ndarray):
        self.base, self.extra = base, np.asarray(extra)
        self.shape, self.dtype = (len(base) + len(self.extra), *base.shape[1:]), base.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            index = int(index) + (len(self) if index < 0 else 0)
            return self.base[index] if index < len(self.base) else self.extra[index - len(self.base)]
        return np.stack([self[int(i)] for i in np.asarray(index).reshape(-1)])


def with_images(images, extra: np.ndarray | None):
    """`images` followed by `extra` (StackedImages), or `images` when there is nothing to add."""
    if extra is None or not len(extra):
        return images
    if isinstance(images, StackedImages):
        return StackedImages(images.base, np.concatenate([images.extra, extra]))
    return StackedImages(images, extra)


@dataclass
class Additions:
    items: list[Item] = field(default_factory=list)  # image: a row of `images`
    pools: dict[str, list[str]] = field(default_factory=dict)  # pool name -> added item ids
    images: np.ndarray | None = None
    vectors: np.ndarray | None = None
    table: IdTable | None = None

    def __len__(self) -> int:
        return len(self.items)

    def extended(self, other: "Additions") -> "Additions":
        """These additions, then `other`'s (its image rows shifted past these)."""
        if not self.items:
            return other
        base = 0 if self.images is None else len(self.images)
        moved = [Item(x.id, x.modality, None if x.image is None else base + x.image, x.text) for x in other.items]
        images = [a for a in (self.images, other.images) if a is not None and len(a)]
        pools = {k: list(v) for k, v in self.pools.items()}
        for name, ids in other.pools.items():
            pools.setdefault(name, []).extend(ids)
        tables = [t for t in (self.table, other.table) if t is not None]
        return Additions(self.items + moved, pools, np.concatenate(images) if images else None,
                         np.concatenate([self.vectors, other.vectors]),
                         IdTable.joined(tables) if tables else None)

    def save(self, run_dir: Path) -> Path:
        run_dir = Path(run_dir)
        final, tmp = run_dir / FOLDER, run_dir / f".{FOLDER}.{uuid.uuid4().hex}.tmp"
        tmp.mkdir()
        try:
            meta = {"items": [{"id": x.id, "modality": x.modality, "text": x.text, "image": x.image}
                              for x in self.items], "pools": self.pools}
            (tmp / "items.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
            if self.images is not None:
                np.save(tmp / "images.npy", self.images)
            np.save(tmp / "item_vecs.npy", np.asarray(self.vectors, dtype=np.float32))
            if self.table is not None:
                self.table.save(tmp)
            old = run_dir / f".{FOLDER}.{uuid.uuid4().hex}.old"
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    @classmethod
    def load(cls, run_dir: Path) -> "Additions":
        """The run's additions (none when it has no `added/`)."""
        folder = Path(run_dir) / FOLDER
        if not (folder / "items.json").is_file():
            return cls()
        meta = json.loads((folder / "items.json").read_text())
        items = [Item(x["id"], x["modality"], x["image"], x["text"]) for x in meta["items"]]
        images = np.load(folder / "images.npy") if (folder / "images.npy").is_file() else None
        table = IdTable.load(folder) if (folder / "idtable.json").is_file() else None
        return cls(items, meta["pools"], images, np.load(folder / "item_vecs.npy"), table)
