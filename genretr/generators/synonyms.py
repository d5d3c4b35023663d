"""Synonyms learned from an item's several captions: the keywords generator's stand-in for an MLLM's lexicon.

An MLLM names one concept with one word whichever synonym a caption used ("red" for crimson, scarlet, red).
The keywords generator has no lexicon, so it learns one from the training items' caption groups: two words
are substitutes when the captions of one item use one or the other far more often than one caption uses
both.  For words a, b with enough support,

    ratio(a, b) = #captions holding a and b  /  #(caption, other caption of its item) pairs where the first
                  holds a but not b and the second b but not a

is small for synonyms (crimson / red: one caption rarely says both) and large for co-occurring concepts
(red / circle, or the colours of two objects each caption names).  Each word is linked to its partner of
lowest ratio when that ratio is below `threshold`; the linked words form one class, named by its most
frequent word.  Words seen too rarely stay themselves.  A concept whose values often come twice in one
item is missed: when two objects of a shapes scene are both small, one caption says "small ... tiny", so
small / tiny / little stay three words (ratio ~0.2 against ~0.05 for colour and shape synonyms).
"""
from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable


def learn_synonyms(groups: Iterable[list[str]], words_of: Callable[[str], set[str]], threshold: float,
                   min_count: int = 5) -> dict[str, str]:
    """{word: canonical word} for every word in a synonym class of two or more (others map to nothing)."""
    df: Counter = Counter()
    same: Counter = Counter()
    cross: Counter = Counter()
    for captions in groups:
        sets = [words_of(c) for c in captions]
        for s in sets:
            df.update(s)
            same.update(itertools.combinations(sorted(s), 2))
        for s1, s2 in itertools.permutations(sets, 2):
            only2 = s2 - s1
            cross.update((a, b) if a < b else (b, a) for a in s1 - s2 for b in only2)
    best: dict[str, tuple[float, str]] = {}
    for (a, b), n in cross.items():
        if n < min_count or df[a] < min_count or df[b] < min_count:
            continue
        ratio = same[a, b] / n
        for w, other in ((a, b), (b, a)):
            if ratio < threshold and (w not in best or (ratio, other) < best[w]):
                best[w] = (ratio, other)
    parent = {w: w for w in best}
    for _, other in best.values():
        parent.setdefault(other, other)

    def root(w: str) -> str:
        while parent[w] != w:
            parent[w] = parent[parent[w]]
            w = parent[w]
        return w

    for w, (_, other) in best.items():
        parent[root(w)] = root(other)
    classes: dict[str, list[str]] = {}
    for w in parent:
        classes.setdefault(root(w), []).append(w)
    canon = {}
    for members in classes.values():
        name = min(members, key=lambda w: (-df[w], w))
        canon.update((w, name) for w in members)
    return canon
