"""`IdTable` and the identifier-scheme contract (DESIGN.md, "identify" stage).

A scheme maps every item to a token sequence: `build(items, embeddings, ctx) -> IdTable`.
Token ids live in the table's own vocabulary (`vocab`, with 0 = `<pad>`, also the
decoder start token, and 1 = `</s>`); every sequence ends with `</s>`, so fixed- and
variable-length identifiers decode alike.  Several items may share a sequence unless the
scheme disambiguates; the inverse map returns all of them.  What a scheme writes besides the sequences
travels in the table and is saved with it: the tokens a pretrained tokenizer must add, SSID's rationales.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

PAD, EOS = 0, 1
SPECIAL_TOKENS = ["<pad>", "</s>"]


@dataclass
class IdTable:
    item_ids: list[str]
    sequences: np.ndarray  # (n_items, max_len) int32, PAD-padded, each row ends with EOS
    vocab: list[str]  # token id → token string
    new_tokens: list[str] = field(default_factory=list)  # tokens a pretrained tokenizer must add
    reasons: dict[str, str] = field(default_factory=dict)  # item id -> SSID's rationale (Sec. III-D), if written
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    _inverse_map: dict[tuple, list[str]] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.sequences = np.asarray(self.sequences, dtype=np.int32)
        if len(self.item_ids) != len(self.sequences):
            raise ValueError(f"{len(self.item_ids)} items but {len(self.sequences)} sequences")
        self._index = {iid: i for i, iid in enumerate(self.item_ids)}
        self._inverse_map = None  # sequence -> items, built at first use (a pool's subset never needs it)

    @property
    def _inverse(self) -> dict[tuple, list[str]]:
        if self._inverse_map is None:
            inverse = {}  # built whole, then published: an interrupted build leaves no partial map behind
            for iid, seq in zip(self.item_ids, self.sequences.tolist()):
                inverse.setdefault(tuple(filter(None, seq)), []).append(iid)  # _strip: PAD is 0
            self._inverse_map = inverse
        return self._inverse_map

    @staticmethod
    def _strip(seq) -> tuple:
        return tuple(int(t) for t in seq if t != PAD)

    @classmethod
    def from_lists(cls, item_ids: list[str], seqs: list[list[int]], vocab: list[str], new_tokens=(),
                   reasons: dict | None = None) -> "IdTable":
        """Pad variable-length sequences (EOS appended here) into a table."""
        width = max(len(s) for s in seqs) + 1
        arr = np.zeros((len(seqs), width), dtype=np.int32)
        for i, s in enumerate(seqs):
            arr[i, : len(s)] = s
            arr[i, len(s)] = EOS
        return cls(list(item_ids), arr, list(vocab), list(new_tokens), dict(reasons or {}))

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokens(self, item_id: str) -> tuple:
        return self._strip(self.sequences[self._index[item_id]])

    def text(self, item_id: str) -> str:
        return " ".join(self.vocab[t] for t in self.tokens(item_id)[:-1])

    def items_of(self, seq) -> list[str]:
        """All items whose identifier is `seq` (EOS included)."""
        return self._inverse.get(self._strip(seq), [])

    def subset(self, item_ids: list[str]) -> "IdTable":
        rows = [self._index[i] for i in item_ids]
        return IdTable(list(item_ids), self.sequences[rows], self.vocab, self.new_tokens,
                       {i: self.reasons[i] for i in item_ids if i in self.reasons})

    @classmethod
    def joined(cls, tables: list["IdTable"]) -> "IdTable":
        """One table of the items of `tables` (in order), which share one vocabulary."""
        if any(t.vocab != tables[0].vocab for t in tables[1:]):
            raise ValueError("tables with different vocabularies cannot be joined")
        width = max(t.sequences.shape[1] for t in tables)
        seqs = np.concatenate([np.pad(t.sequences, ((0, 0), (0, width - t.sequences.shape[1]))) for t in tables])
        return cls([i for t in tables for i in t.item_ids], seqs, tables[0].vocab, tables[0].new_tokens,
                   {k: v for t in tables for k, v in t.reasons.items()})

    def collisions(self) -> int:
        """Number of items that share their sequence with another item."""
        return sum(len(v) for v in self._inverse.values() if len(v) > 1)

    def save(self, path: Path) -> None:
        path = Path(path)
        np.save(path / "sequences.npy", self.sequences)
        (path / "idtable.json").write_text(json.dumps(
            {"item_ids": self.item_ids, "vocab": self.vocab, "new_tokens": self.new_tokens, "reasons": self.reasons},
            ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> "IdTable":
        path = Path(path)
        meta = json.loads((path / "idtable.json").read_text())
        return cls(meta["item_ids"], np.load(path / "sequences.npy"), meta["vocab"], meta["new_tokens"],
                   meta.get("reasons", {}))


class LazyRows:
    """An array computed when a scheme reads it (`np.asarray(rows)`), not before: context that most schemes
    never read (the train query vectors: 1 GB at 100k shapes images, read by GENIUS only)."""

    def __init__(self, compute, n: int):
        self.compute, self.n = compute, int(n)

    def __len__(self) -> int:
        return self.n

    def __array__(self, dtype=None, copy=None):
        x = np.asarray(self.compute())
        return x if dtype is None else x.astype(dtype, copy=False)


# `ctx.describe`'s captioner, saved by the identify stage in its artifact when a scheme used it (SSID), so that
# items added later are described by the same captioner (`load_captioner(workdir / DESCRIBER_DIR)`)
DESCRIBER_DIR = "describer"


@dataclass
class IdentifierContext:
    """What a scheme may learn from besides the items and their embeddings (the identify stage fills it)."""

    train_texts: list[str] = field(default_factory=list)  # training captions (tokenizers, captioners)
    workdir: Path | None = None  # where the scheme may save side artifacts (a tokenizer, a captioner)
    seed: int = 0
    progress: bool = False
    item_captions: dict = field(default_factory=dict)  # item id -> its training captions
    # (pairs, dim): every (train query of the run's tasks, relevant item) ...
    train_query_vecs: np.ndarray | LazyRows | None = None
    train_query_items: list = field(default_factory=list)  # ... its item
    train_query_tasks: list = field(default_factory=list)  # ... its task
    train_query_ids: list = field(default_factory=list)  # ... its query's id (one query's pairs share it)
    train_query_sides: list = field(default_factory=list)  # ... its query's (image index or None, text or None)
    # (image index or None, text or None) per row -> (n, 2, d): the encoder's image and text vectors unfused
    # (zeros for a missing side), for schemes that fuse the two themselves (GENIUS's h(x, y), Sec. 4.2.1)
    pair_parts: object = None
    item_modalities: list = field(default_factory=list)  # of the items being identified, in order
    cache_dir: Path | None = None  # kept across identify keys (SSID's generator answers)
    describe: object = None  # item ids -> captions written by the run's captioner (genretr.stages.captions)
    images: np.ndarray | None = None  # the images, by Item.image: the dataset's (MLLM generators look at them), or the
    # new items' under genretr.add
    # fit_captioner(inputs, captions per input, captioner config, seed, progress) -> a captioner with
    # describe_words(inputs, batch_size) and save(dir) (genretr.captioner.fit_captioner; GRACE Sec. 3.3)
    fit_captioner: object = None
    device: object = "cpu"  # where a scheme trains and runs its models (the run's, genretr.hardware.run_device)
    load_captioner: object = None  # a folder -> the captioner saved there (genretr.captioner.Captioner.load)


class IdentifierScheme(Protocol):
    def build(self, items: list, embeddings: np.ndarray, ctx: IdentifierContext) -> IdTable: ...

    # Optional (issue 19): identifiers of items added after training, in `table`'s vocabulary, from what `build`
    # saved in `ctx.workdir` (the identify artifact, read only).  Schemes without it refuse (`cannot_add`).
    # def assign(self, items: list, embeddings: np.ndarray, ctx: IdentifierContext, table: IdTable) -> IdTable
