"""`WordVocab`: a word-level query vocabulary for token-input decoders (T5 `input=tokens`, CART).

Built from the training queries only (lower-cased, split on non-letters/digits); unseen words map
to `<unk>`.  PAD = 0, UNK = 1.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import torch

PAD, UNK = 0, 1
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class WordVocab:
    def __init__(self, tokens: list[str]):
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, texts, min_count: int = 1) -> "WordVocab":
        counts = Counter(w for t in texts for w in words(t))
        return cls(["<pad>", "<unk>"] + sorted(w for w, c in counts.items() if c >= min_count))

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, texts: list[str | None], max_len: int) -> torch.Tensor:
        """(len(texts), max_len) token ids, PAD-padded, truncated; None or "" gives an all-PAD row."""
        out = torch.zeros(len(texts), max_len, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [self.index.get(w, UNK) for w in words(t or "")][:max_len]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.tokens))

    @classmethod
    def load(cls, path: Path) -> "WordVocab":
        return cls(json.loads(Path(path).read_text()))
