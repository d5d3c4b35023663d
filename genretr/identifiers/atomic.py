"""GRACE's atomic identifier (Sec. 3.3): one new vocabulary token per item, "<item_17>".

The identifier is a single token (then EOS), so decoding is one step and the beam size does not
matter (Appendix B).  Whether that token is predicted by the decoder's tied output embedding
(`head: vocab`) or by a separate classifier head over the items (`head: classifier`) is the
backbone's business: the key lives in conf/identifier/atomic.yaml, read as `cfg.identifier.head`,
and this class only checks it (`check_options`, which `genretr.validate` calls before any stage runs).
"""
from __future__ import annotations

from genretr.errors import GenretrError
from genretr.identifiers.base import SPECIAL_TOKENS, IdTable

HEADS = ("vocab", "classifier")


class AtomicIdentifier:
    # why genretr.add refuses new items (issue 19)
    cannot_add = "an atomic ID is a new token whose embedding only training on the item learns (GRACE Sec. 3.2)"

    def __init__(self, head: str = "vocab"):
        self.check_options(head=head)
        self.head = head

    @staticmethod
    def check_options(head: str = "vocab") -> None:
        if head not in HEADS:
            raise GenretrError(f"identifier.head={head} is not one of {', '.join(HEADS)}")

    def build(self, items, embeddings, ctx) -> IdTable:
        if not items:
            raise GenretrError("atomic identifiers: no items")
        tokens = [f"<item_{i}>" for i in range(len(items))]
        first = len(SPECIAL_TOKENS)
        return IdTable.from_lists([it.id for it in items], [[first + i] for i in range(len(items))],
                                  SPECIAL_TOKENS + tokens, new_tokens=tokens)
