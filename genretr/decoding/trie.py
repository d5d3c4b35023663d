"""`Trie` over identifier token sequences (GRACE Sec. 3.6, GENIUS Sec. 4.4).

Built from an `IdTable`'s PAD-padded, EOS-terminated sequences; maps every valid prefix
to the sorted tokens that may follow it.  Several items may end at the same leaf.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from genretr.identifiers.base import PAD, IdTable


class Trie:
    def __init__(self, table: IdTable):
        children: dict[tuple, set[int]] = {}
        for seq in table.sequences:
            toks = [int(t) for t in seq if t != PAD]
            for k in range(len(toks)):
                children.setdefault(tuple(toks[:k]), set()).add(toks[k])
        self.children = {p: sorted(c) for p, c in children.items()}
        self.max_len = int(max((np.count_nonzero(s != PAD) for s in table.sequences), default=0))
        self.num_sequences = len({tuple(int(t) for t in s if t != PAD) for s in table.sequences})

    def allowed(self, prefix) -> list[int]:
        """Tokens that may follow `prefix`; [] when it is not a valid prefix (or is complete)."""
        return self.children.get(tuple(int(t) for t in prefix), [])

    def save(self, path: Path) -> None:
        with open(Path(path) / "trie.pkl", "wb") as f:
            pickle.dump({"children": self.children, "max_len": self.max_len, "n": self.num_sequences}, f)

    @classmethod
    def load(cls, path: Path) -> "Trie":
        with open(Path(path) / "trie.pkl", "rb") as f:
            d = pickle.load(f)
        t = cls.__new__(cls)
        t.children, t.max_len, t.num_sequences = d["children"], d["max_len"], d["n"]
        return t
