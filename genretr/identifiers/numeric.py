"""GRACE's numeric identifier (Sec. 3.3): the shuffled image number 1..N, one digit per token.

"1 3 7 6 8" → "1", "3", "7", "6", "8": only ten tokens, but longer sequences than the string
identifier.  The numbering is `StringIdentifier`'s for the same seed, so the two schemes name every
item by the same number and differ only in how it is tokenized.
"""
from __future__ import annotations

import numpy as np

from genretr.errors import GenretrError
from genretr.identifiers.base import SPECIAL_TOKENS, IdTable

DIGITS = [str(d) for d in range(10)]


def shuffled_numbers(n: int, seed: int) -> np.ndarray:
    """Item i's number in 1..n after a seeded shuffle (the permutation of `StringIdentifier`)."""
    order = np.random.default_rng(seed).permutation(n)
    numbers = np.empty(n, dtype=np.int64)
    numbers[order] = np.arange(1, n + 1)
    return numbers


class NumericIdentifier:
    # why genretr.add refuses new items (issue 19)
    cannot_add = "a numeric ID is arbitrary: the decoder learns it only by memorising the item (GRACE Sec. 3.2)"

    def __init__(self, seed: int = 0, zero_pad: bool = False):
        """`zero_pad`: left-pad every number to the width of N (fixed length); the paper does not."""
        self.seed, self.zero_pad = seed, zero_pad

    def build(self, items, embeddings, ctx) -> IdTable:
        if not items:
            raise GenretrError("numeric identifiers: no items to number")
        numbers = shuffled_numbers(len(items), self.seed)
        width = len(str(len(items))) if self.zero_pad else 0
        vocab = SPECIAL_TOKENS + DIGITS
        seqs = [[len(SPECIAL_TOKENS) + int(d) for d in str(n).zfill(width)] for n in numbers]
        return IdTable.from_lists([it.id for it in items], seqs, vocab)
