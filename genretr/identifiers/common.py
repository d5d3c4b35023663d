"""Helpers the identifier schemes share: the embeddings check and the counters that make shared identifiers
unique ("#j" tokens, GRACE/SSID; CART's unique token, Sec. 3.2.3)."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

from genretr.errors import GenretrError

COUNTER = re.compile(r"#\d+")  # the token `append_counters` appends to an identifier others share


def check_embeddings(items, embeddings, scheme: str) -> np.ndarray:
    """(n, d) float32 C-contiguous vectors, one per item, or a one-line error."""
    x = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32)) if embeddings is not None else None
    if x is None or x.ndim != 2 or len(x) != len(items) or len(items) == 0:
        shape = None if x is None else x.shape
        raise GenretrError(f"{scheme} identifiers need one embedding per item: {len(items)} items, embeddings {shape}")
    if not np.isfinite(x).all():
        raise GenretrError(f"{scheme} identifiers: the item embeddings contain NaN or inf")
    return x


def append_counters(seqs: list[list[str]]) -> list[list[str]]:
    """Append "#j" to the j-th sequence (j = 0, 1, ...) of every group of identical ones; others are kept."""
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(seqs):
        groups.setdefault(tuple(s), []).append(i)
    out = [list(s) for s in seqs]
    for rows in groups.values():
        if len(rows) > 1:
            for j, r in enumerate(rows):
                out[r].append(f"#{j}")
    if len({tuple(s) for s in out}) != len(out):
        raise GenretrError("disambiguation failed: a sequence already ended with a counter token '#j'")
    return out


def own_words(words: list[str]) -> list[str]:
    """An identifier's words (token strings) without its final "#j" counter: what `append_counters` grouped it by."""
    return words[:-1] if words and COUNTER.fullmatch(words[-1]) else list(words)


def counter_tokens(seqs: list[list[str]]) -> list[str]:
    """The counter tokens "#j" used in `seqs`, in numeric order."""
    used = {s[-1] for s in seqs if s and COUNTER.fullmatch(s[-1])}
    return sorted(used, key=lambda t: int(t[1:]))


def unique_counters(prefixes: list[tuple]) -> list[int]:
    """Sec. 3.2.3 "search and count": each prefix's n-th occurrence (in order) gets counter n."""
    seen: Counter = Counter()
    out = []
    for p in prefixes:
        out.append(seen[p])
        seen[p] += 1
    return out


def colliding_items(prefixes: list[tuple]) -> int:
    """Items whose semantic part (before the unique token) is shared with another item."""
    counts = Counter(prefixes)
    return sum(c for c in counts.values() if c > 1)


def continued_counters(table, prefixes: list[tuple]) -> list[int]:
    """Counters for new items' semantic `prefixes` (token strings) that continue `table`'s: a prefix already
    held by n items of the table (its identifiers end in a counter token) starts at n ("search and count" over
    the old items and then the new ones, CART Sec. 3.2.3)."""
    held = Counter(tuple(table.vocab[t] for t in table.tokens(i)[:-2]) for i in table.item_ids)
    out = []
    for p in prefixes:
        out.append(held[p])
        held[p] += 1
    return out


def continued_groups(table, words: list[list[str]]) -> list[list[str]]:
    """New items' identifiers (`words`, token strings) with "#n" appended where n >= 1 items of `table` (or
    earlier entries of `words`) already hold the same identifier, its counter aside: `append_counters`' groups,
    continued, so that an added item never shares its identifier with another."""
    held = Counter()
    for iid in table.item_ids:
        held[tuple(own_words([table.vocab[t] for t in table.tokens(iid)[:-1]]))] += 1
    out = []
    for ws in words:
        n = held[tuple(ws)]
        held[tuple(ws)] += 1
        out.append([*ws, f"#{n}"] if n else list(ws))
    return out


def in_vocabulary(table, item_ids: list[str], words: list[list[str]], scheme: str):
    """An IdTable of new items whose identifiers (`words`, token strings) use `table`'s vocabulary, which its
    decoder was trained on; a token outside it is one line naming the item (the decoder never learned it)."""
    from genretr.identifiers.base import IdTable

    index = {t: i for i, t in enumerate(table.vocab)}
    seqs = []
    for iid, ws in zip(item_ids, words):
        missing = [w for w in ws if w not in index]
        if missing:
            raise GenretrError(f"{scheme}: new item {iid!r} needs the token {missing[0]!r}, which the trained decoder "
                               "has never seen: retrain to add it")
        seqs.append([index[w] for w in ws])
    return IdTable.from_lists(list(item_ids), seqs, table.vocab, new_tokens=table.new_tokens)
