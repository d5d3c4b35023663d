"""GRACE's string identifier (Sec. 3.3): the items are shuffled and numbered 1..N, and the
number, as a string, is tokenized by the backbone's tokenizer into multi-digit pieces
("13768" → "13", "768").

No pretrained tokenizer is available offline, so — unless `tokenizer` points to one — we
train a BPE on the training captions plus the identifier strings themselves, which gives
digit merges as a pretrained LM tokenizer has them.
"""
from __future__ import annotations

import numpy as np

from genretr.identifiers.base import SPECIAL_TOKENS, IdTable


class StringIdentifier:
    def __init__(self, seed: int = 0, vocab_size: int = 2000, tokenizer: str | None = None):
        self.seed, self.vocab_size, self.tokenizer_path = seed, vocab_size, tokenizer

    def build(self, items, embeddings, ctx) -> IdTable:
        from genretr.data import tokenizer as toks

        order = np.random.default_rng(self.seed).permutation(len(items))
        numbers = np.empty(len(items), dtype=np.int64)
        numbers[order] = np.arange(1, len(items) + 1)
        strings = [str(n) for n in numbers]
        if self.tokenizer_path:
            tok = toks.load(self.tokenizer_path)
        else:
            tok = toks.train_bpe(list(ctx.train_texts) + strings, vocab_size=self.vocab_size, min_frequency=1)
            toks.save(tok, ctx.workdir / "tokenizer.json")
        pieces = [enc.tokens for enc in tok.encode_batch(strings)]
        vocab = list(SPECIAL_TOKENS) + sorted({p for ps in pieces for p in ps})
        index = {p: i for i, p in enumerate(vocab)}
        return IdTable.from_lists([it.id for it in items], [[index[p] for p in ps] for ps in pieces], vocab)
