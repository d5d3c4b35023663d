"""What a captioner reads and writes, below the models that do it (`genretr.captioner`): caption words, the
images of the items a pixel-reading captioner sees, and the train split's captions it learns from.  Identifier
schemes that caption (GRACE's semantic IDs, Sec. 3.3) read these and get the captioner itself from their
`IdentifierContext`."""
from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from genretr.artifacts import plain_dict
from genretr.data.schema import CAPTION_TASKS, RetrievalDataset
from genretr.errors import GenretrError

_WORD = re.compile(r"\w+(?:[-']\w+)*|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks ("top-left" stays one word)."""
    return _WORD.findall(text.lower())


def join_words(tokens: list[str]) -> str:
    """The inverse of `words` up to case and spacing: no space before punctuation."""
    return re.sub(r" ([,.;:!?)])", r"\1", " ".join(tokens))


def wants_pixels(cfg: Mapping) -> bool:
    """Whether a captioner config reads images (`input: pixels`) rather than item embeddings."""
    kind = plain_dict(cfg).get("input", "embedding")
    if kind not in ("embedding", "pixels"):
        raise GenretrError(f"captioner.input={kind} is not one of embedding, pixels")
    return kind == "pixels"


def item_images(images, items, who: str) -> np.ndarray:
    """The images of `items` (objects with `.id`, `.image`) for a pixel-reading captioner; `who` names the caller
    in the error an item without an image (or a missing image array) raises."""
    missing = next((it.id for it in items if images is None or getattr(it, "image", None) is None), None)
    if missing is not None:
        raise GenretrError(f"{who}: captioner.input=pixels, but item '{missing}' has no image; use the default "
                           "captioner")
    return np.asarray(images)[[it.image for it in items]]


def train_captions(ds: RetrievalDataset) -> dict[str, list[str]]:
    """{item id: its captions} from the train split's caption queries (`CAPTION_TASKS`), in query order: what
    captioners, identifier schemes and SSID's generators learn from."""
    out: dict[str, list[str]] = {}
    for q in ds.splits["train"].queries:
        if q.task in CAPTION_TASKS and q.text:
            for r in q.relevant:
                out.setdefault(r, []).append(q.text)
    return out


def train_caption_texts(ds: RetrievalDataset) -> list[str]:
    """The train split's caption queries' texts, one per query (tokenizers, generators' document frequencies)."""
    return [q.text for q in ds.splits["train"].queries if q.task in CAPTION_TASKS]
