"""genretr.decoding.trie.Trie: allowed continuations, shared prefixes, duplicates, save/load."""
import pytest

from genretr.decoding.trie import Trie
from genretr.identifiers.base import EOS, IdTable

VOCAB = ["<pad>", "</s>"] + [f"t{i}" for i in range(2, 10)]


@pytest.fixture
def table():
    # shared prefixes (2,3,...), a sequence that is a prefix of another ((2,) vs (2,3,..)),
    # a duplicate ((5,6) twice) and lengths 1..3
    return IdTable.from_lists(["a", "b", "c", "d", "e", "f"],
                              [[2, 3, 4], [2, 3, 5], [2], [5, 6], [5, 6], [7]], VOCAB)


def test_root_and_inner_prefixes(table):
    trie = Trie(table)
    assert trie.allowed([]) == [2, 5, 7]
    assert trie.allowed(()) == [2, 5, 7]
    assert trie.allowed([2]) == [EOS, 3]  # "c" ends here, "a"/"b" go on
    assert trie.allowed([2, 3]) == [4, 5]
    assert trie.allowed([2, 3, 4]) == [EOS]
    assert trie.allowed([5]) == [6]
    assert trie.allowed([5, 6]) == [EOS]
    assert trie.allowed([7]) == [EOS]


def test_complete_and_invalid_prefixes(table):
    trie = Trie(table)
    for complete in ([2, EOS], [2, 3, 4, EOS], [5, 6, EOS], [7, EOS]):
        assert trie.allowed(complete) == []
    for invalid in ([3], [2, 4], [2, 3, 6], [9], [5, 5], [2, 3, 4, 5], [EOS]):
        assert trie.allowed(invalid) == []


def test_accepts_tensors_and_numpy(table):
    import numpy as np
    import torch
    trie = Trie(table)
    assert trie.allowed(torch.tensor([2, 3])) == [4, 5]
    assert trie.allowed(np.array([2, 3], dtype=np.int32)) == [4, 5]


def test_sizes(table):
    trie = Trie(table)
    assert trie.max_len == 4  # longest identifier (3 tokens) + EOS
    assert trie.num_sequences == 5  # (5,6) counted once


def test_every_identifier_is_a_path(table):
    trie = Trie(table)
    for iid in table.item_ids:
        toks = table.tokens(iid)
        for k in range(len(toks)):
            assert toks[k] in trie.allowed(toks[:k])
        assert trie.allowed(toks) == []


def test_walking_the_trie_enumerates_exactly_the_identifiers(table):
    trie = Trie(table)
    found, stack = set(), [()]
    while stack:
        p = stack.pop()
        for t in trie.allowed(p):
            (found.add(p + (t,)) if t == EOS else stack.append(p + (t,)))
    assert found == {table.tokens(i) for i in table.item_ids}


def test_save_load(tmp_path, table):
    trie = Trie(table)
    trie.save(tmp_path)
    back = Trie.load(tmp_path)
    assert back.children == trie.children
    assert (back.max_len, back.num_sequences) == (trie.max_len, trie.num_sequences)
    assert back.allowed([2]) == [EOS, 3]
