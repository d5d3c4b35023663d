"""The one in-memory schema every dataset source produces (DESIGN.md, "dataset" stage).

Nothing downstream knows which source a `RetrievalDataset` came from.  Images live in
one uint8 array (`images[i]` is H×W×3); items and queries point into it by index.

Tasks are M-BEIR's eight (GENIUS Sec. 3 and 5.1: query modality → candidate modality),
plus text → audio / video for precomputed features (CART Sec. 4.1).  Each `Split` maps a
task to its *task-specific* pool (GENIUS Table 1).  A split may also carry
`pools["universal"]` (`UNIVERSAL`): the union pool of every modality that universal
retrieval searches for every task's queries (GENIUS Table 2, "retrieved from a global
pool").  It is a pool, not a task: `tasks()` leaves it out and no query has that task.

Items without pixels (audio, video, or any precomputed feature set) have no `image`;
their vectors come with the dataset in `item_vectors` (item id → (d,) float32), and the
vectors of text queries embedded by the same model, when given, in `query_vectors`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IMAGE, TEXT, PAIR = "image", "text", "image,text"
AUDIO, VIDEO = "audio", "video"  # precomputed-feature items (CART): no pixels, vector given
UNIVERSAL = "universal"  # Split.pools key of the union pool (GENIUS Table 2)

# Task names follow M-BEIR's (query modality → candidate modality).
TASK_TARGET = {
    "t2i": IMAGE,  # caption → image (GRACE, CART, SSID)
    "i2t": TEXT,  # image → caption
    "t2it": PAIR,  # caption → image–text pair
    "it2i": IMAGE,  # reference image + modification text → target image (composed)
    "t2t": TEXT,  # text → text (M-BEIR WebQA)
    "i2i": IMAGE,  # image → image (M-BEIR NIGHTS)
    "it2t": TEXT,  # image + text → text (M-BEIR OVEN, InfoSeek)
    "it2it": PAIR,  # image + text → image–text pair (M-BEIR OVEN, InfoSeek)
    "t2a": AUDIO,  # caption → audio (CART: Clotho, AudioCaps)
    "t2v": VIDEO,  # caption → video (CART: MSR-VTT, MSVD)
}
CAPTION_TASKS = ("t2i", "t2a", "t2v")  # caption -> item: the (item, caption) pairs encoders and captioners learn from

# M-BEIR-style instructions (GENIUS Section 4.2.2 prepends them to the query).
INSTRUCTIONS = {
    "t2i": "Retrieve an image that matches the caption.",
    "i2t": "Find a caption that describes this image.",
    "t2it": "Retrieve an image and its caption that match the description.",
    "it2i": "Change the reference image as the text says and find the resulting image.",
    "t2t": "Retrieve a text that says the same as the given text.",
    "i2i": "Find an image that shows the same scene as this image.",
    "it2t": "Change the reference image as the text says and find a caption of the resulting image.",
    "it2it": "Change the reference image as the text says and find the resulting image and its caption.",
    "t2a": "Retrieve an audio clip that matches the caption.",
    "t2v": "Retrieve a video that matches the caption.",
}


@dataclass(frozen=True)
class Item:
    """A retrievable candidate: an image, a text, or an image–text pair."""

    id: str
    modality: str
    image: int | None = None  # index into RetrievalDataset.images
    text: str | None = None


@dataclass(frozen=True)
class Query:
    id: str
    task: str
    relevant: tuple[str, ...]
    instruction: str | None = None
    image: int | None = None
    text: str | None = None


@dataclass
class Split:
    """One split: the queries asked in it and the candidate pool each task searches."""

    queries: list[Query] = field(default_factory=list)
    pools: dict[str, list[str]] = field(default_factory=dict)  # task (or UNIVERSAL) → candidate item ids


@dataclass
class RetrievalDataset:
    name: str
    images: np.ndarray  # (N, H, W, 3) uint8
    items: dict[str, Item]
    splits: dict[str, Split]
    # image index → the indices of its captions' items, used for image–caption training pairs
    captions: dict[int, list[str]] = field(default_factory=dict)
    # precomputed features (dataset=precomputed): item id → (d,) float32, and query id → (d,) float32
    item_vectors: dict[str, np.ndarray] | None = None
    query_vectors: dict[str, np.ndarray] | None = None

    def tasks(self, split: str) -> list[str]:
        """The split's tasks (its pools, less the universal one)."""
        return sorted(t for t in self.splits[split].pools if t != UNIVERSAL)

    def queries(self, split: str, task: str) -> list[Query]:
        return [q for q in self.splits[split].queries if q.task == task]

    def pool(self, split: str, task: str) -> list[Item]:
        return [self.items[i] for i in self.splits[split].pools[task]]

    def training_pairs(self) -> tuple[np.ndarray, list[str]]:
        """(image index, caption) pairs of the train split, for contrastive encoder training."""
        idx, texts = [], []
        for q in self.splits["train"].queries:
            if q.task == "t2i" and q.text is not None:
                target = self.items[q.relevant[0]]
                idx.append(target.image)
                texts.append(q.text)
        return np.asarray(idx, dtype=np.int64), texts

    def summary(self) -> str:
        parts = []
        for name, s in self.splits.items():
            pools = ", ".join(f"{t}:{len(p)}" for t, p in sorted(s.pools.items()))
            parts.append(f"{name}: {len(s.queries)} queries, pools {pools}")
        return f"{self.name}: {len(self.images)} images, {len(self.items)} items; " + "; ".join(parts)


def pool_items(ds: "RetrievalDataset", splits, tasks) -> list[str]:
    """Every item in the pools of `tasks` in `splits`, in order of first appearance (what the identify stage
    gives identifiers: GRACE memorizes the test images too)."""
    seen: dict[str, None] = {}
    for split in splits:
        for task in tasks:
            for i in ds.splits[split].pools.get(task, []):
                seen.setdefault(i)
    return list(seen)


def query_text(q: Query, instructions: bool) -> str | None:
    """The text a query is embedded from: its own, or with ``instructions`` its instruction then its text."""
    if not instructions or not q.instruction:
        return q.text or None
    return f"{q.instruction} {q.text}" if q.text else q.instruction


def query_side(q: Query, instructions: bool) -> tuple:
    """The (image index or None, text or None) a query is embedded from (`query_text` for its text): the side the
    encode stage fuses and GENIUS's h(image, text) reads."""
    return q.image, query_text(q, instructions)


def item_side(item: Item) -> tuple:
    """An item's (image, text) side as a fusion of the encoder's two vectors reads it (GENIUS's h, Sec. 4.2.1):
    by modality, as precomputed items carry no pixels; an image-text pair's actual image index and text."""
    if item.modality == PAIR:
        return item.image, item.text or None
    return (True, None) if item.modality == IMAGE else (None, True)
