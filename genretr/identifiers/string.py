"""GRACE's string identifier (Sec. 3.3): the items are shuffled and numbered 1..N, and the
number, as a string, is tokenized by the backbone's tokenizer into multi-digit pieces
("13768" → "13", "768").

With `tokenizer: PATH` (a HF `tokenizers` JSON, e.g. a pretrained LM's) that tokenizer
splits the numbers.  Without one — no pretrained tokenizer exists offline — the number is
split left to right into chunks of `chunk_digits` digits, which is how Llama-3- and
GPT-4-style tokenizers pre-tokenize numbers ("13768" → "137", "68").
"""
from __future__ import annotations

import numpy as np

from genretr.identifiers.base import SPECIAL_TOKENS, IdTable


def chunk_number(s: str, chunk_digits: int) -> list[str]:
    return [s[i:i + chunk_digits] for i in range(0, len(s), chunk_digits)]


class StringIdentifier:
    # why genretr.add refuses new items (issue 19)
    cannot_add = "a string ID is arbitrary: the decoder learns it only by memorising the item (GRACE Sec. 3.2)"

    def __init__(self, seed: int = 0, chunk_digits: int = 3, tokenizer: str | None = None):
        self.seed, self.chunk_digits, self.tokenizer_path = seed, chunk_digits, tokenizer

    def build(self, items, embeddings, ctx) -> IdTable:
        order = np.random.default_rng(self.seed).permutation(len(items))
        numbers = np.empty(len(items), dtype=np.int64)
        numbers[order] = np.arange(1, len(items) + 1)
        strings = [str(n) for n in numbers]
        if self.tokenizer_path:
            from genretr.data.tokenizer import load

            pieces = [enc.tokens for enc in load(self.tokenizer_path).encode_batch(strings)]
        else:
            pieces = [chunk_number(s, self.chunk_digits) for s in strings]
        vocab = list(SPECIAL_TOKENS) + sorted({p for ps in pieces for p in ps})
        index = {p: i for i, p in enumerate(vocab)}
        return IdTable.from_lists([it.id for it in items], [[index[p] for p in ps] for ps in pieces], vocab)
