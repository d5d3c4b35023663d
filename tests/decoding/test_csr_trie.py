"""genretr.decoding.csr_trie.CSRTrie: built from numpy, equal to the dict Trie, vectorised ops, save/load."""
import random
import time

import numpy as np
import pytest
import torch

from genretr.decoding.csr_trie import CSRTrie
from genretr.decoding.trie import Trie
from genretr.identifiers.base import EOS, PAD, IdTable

VOCAB = ["<pad>", "</s>"] + [f"t{i}" for i in range(2, 10)]


@pytest.fixture
def table():
    # shared prefixes, an identifier that is a prefix of another ((2,) vs (2,3,..)), a duplicate, lengths 1..3
    return IdTable.from_lists(["a", "b", "c", "d", "e", "f"],
                              [[2, 3, 4], [2, 3, 5], [2], [5, 6], [5, 6], [7]], VOCAB)


def random_table(seed, n=60, V=12, alpha=None, lengths=(1, 6), dups=10):
    rng = random.Random(seed)
    alpha = alpha or rng.choice([2, 3, V - 2])
    seqs = [[rng.randint(2, 1 + alpha) for _ in range(rng.randint(*lengths))] for _ in range(n)]
    seqs += [rng.choice(seqs) for _ in range(dups)]
    return IdTable.from_lists([f"x{k}" for k in range(len(seqs))], seqs,
                              ["<pad>", "</s>"] + [f"t{k}" for k in range(2, V)])


def all_prefixes(table):
    out = {()}
    for i in table.item_ids:
        s = table.tokens(i)
        out |= {s[:k] for k in range(len(s) + 1)}
    return out


def test_small_table(table):
    t = CSRTrie.from_table(table)
    assert t.allowed([]) == [2, 5, 7]
    assert t.allowed([2]) == [EOS, 3]
    assert t.allowed([2, 3]) == [4, 5]
    assert t.allowed([5, 6]) == [EOS]
    for bad in ([2, EOS], [3], [2, 4], [9], [EOS], [2, 3, 4, 5]):
        assert t.allowed(bad) == []
    assert (t.max_len, t.num_sequences) == (4, 5)
    assert t.num_nodes == 1 + 3 + 2 + 2 + 2 + 3  # root, depth 1..4
    # leaves carry the rows of the items behind them (a shared identifier: both rows)
    for iid in table.item_ids:
        node = t.node_of(table.tokens(iid))
        assert table.item_ids.index(iid) in t.items_of_node(node)
    assert t.items_of_node(t.node_of([5, 6, EOS])) == [3, 4]
    assert t.items_of_node(t.node_of([2])) == []  # inner node


@pytest.mark.parametrize("seed", range(8))
def test_allowed_equals_the_dict_trie(seed):
    table = random_table(seed)
    d, c = Trie(table), CSRTrie.from_table(table)
    assert (c.max_len, c.num_sequences) == (d.max_len, d.num_sequences)
    prefixes = all_prefixes(table)
    rng = random.Random(seed)
    prefixes |= {p + (rng.randint(1, 11),) for p in list(prefixes)}  # mostly invalid extensions
    for p in prefixes:
        assert c.allowed(p) == d.allowed(p), p
    assert {tuple(int(x) for x in s if x != PAD) for s in c.sequences()} == {table.tokens(i) for i in table.item_ids}


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_ops_agree_with_allowed(seed):
    table = random_table(seed, V=14)
    c = CSRTrie.from_table(table)
    prefixes = sorted(all_prefixes(table), key=lambda p: (len(p), p))
    nodes = torch.tensor([c.node_of(p) for p in prefixes] + [-1])
    tok, child, valid = c.children(nodes)
    mask = c.allowed_mask(nodes, table.vocab_size)
    for i, p in enumerate(prefixes):
        allowed = c.allowed(p)
        assert tok[i][valid[i]].tolist() == allowed
        assert mask[i].nonzero().flatten().tolist() == allowed
        for t, ch in zip(tok[i][valid[i]].tolist(), child[i][valid[i]].tolist()):
            assert ch == c.node_of(p + (t,))
    assert not valid[-1].any() and not mask[-1].any()
    # step: every (node, token) pair, valid or not
    nn, tt = torch.meshgrid(nodes[:-1], torch.arange(table.vocab_size), indexing="ij")
    got = c.step(nn.flatten(), tt.flatten()).view(nn.shape)
    for i, p in enumerate(prefixes):
        for t in range(table.vocab_size):
            assert got[i, t].item() == c.node_of(p + (t,)), (p, t)
    assert (c.step(torch.tensor([-1, -1]), torch.tensor([2, EOS])) == -1).all()
    # walk = node_of for padded rows of one length
    rows = [p for p in prefixes if len(p) == 2]
    assert c.walk(torch.tensor(rows)).tolist() == [c.node_of(p) for p in rows]


def test_build_from_numpy_fixed_length():
    rng = np.random.default_rng(0)
    n = 5000
    seqs = np.concatenate([rng.integers(2, 5, (n, 1)), rng.integers(5, 40, (n, 3)), np.ones((n, 1))], 1)
    c = CSRTrie.from_sequences(seqs, vocab_size=40)
    distinct = {tuple(r) for r in seqs.tolist()}
    assert c.num_sequences == len(distinct) and c.max_len == 5
    assert {tuple(r) for r in c.sequences().tolist()} == distinct
    assert c.allowed([]) == [2, 3, 4]
    # items: every row of the input under its identifier's leaf
    rows = np.concatenate([c.items_of_node(int(node)) for node in c.leaf_node])
    assert sorted(rows.tolist()) == list(range(n))
    for r in (0, 17, n - 1):
        assert r in c.items_of_node(c.node_of(seqs[r].tolist()))


def test_variable_length_and_errors():
    seqs = np.array([[2, 3, EOS, PAD], [2, EOS, PAD, PAD], [4, 4, 4, EOS], [2, 3, EOS, PAD]])
    c = CSRTrie.from_sequences(seqs, vocab_size=6)
    assert c.num_sequences == 3 and c.max_len == 4
    assert c.allowed([2]) == [EOS, 3]
    assert c.items_of_node(c.node_of([2, 3, EOS])) == [0, 3]
    with pytest.raises(ValueError):
        CSRTrie.from_sequences(np.array([[2, 3, 4]]), vocab_size=6)  # no EOS
    with pytest.raises(ValueError):
        CSRTrie.from_sequences(np.array([[2, PAD, 3, EOS]]), vocab_size=6)  # a hole
    with pytest.raises(ValueError):
        CSRTrie.from_sequences(np.array([[2, 9, EOS]]), vocab_size=6)  # out of range
    empty = CSRTrie.from_sequences(np.zeros((0, 3), np.int32), vocab_size=6)
    assert empty.num_sequences == 0 and empty.allowed([]) == []


def test_save_load(tmp_path):
    table = random_table(3)
    c = CSRTrie.from_table(table)
    c.save(tmp_path)
    back = CSRTrie.load(tmp_path)
    for name in ("indptr", "edge_token", "depth_ptr", "leaf_node", "leaf_ptr", "leaf_items"):
        assert np.array_equal(getattr(back, name), getattr(c, name)), name
    assert (back.max_len, back.num_sequences, back.vocab_size) == (c.max_len, c.num_sequences, c.vocab_size)
    for p in all_prefixes(table):
        assert back.allowed(p) == c.allowed(p)


def test_coerce_from_a_dict_trie():
    table = random_table(5)
    c = CSRTrie.coerce(Trie(table))
    for p in all_prefixes(table):
        assert c.allowed(p) == Trie(table).allowed(p)
    assert CSRTrie.coerce(c) is c


def test_100k_ids_build_and_memory():
    """Sanity at scale (not timed as a test criterion): 100k GENIUS-like identifiers of 9 codes."""
    rng = np.random.default_rng(1)
    n = 100_000
    seqs = np.concatenate([rng.integers(2, 5, (n, 1)), rng.integers(5, 4101, (n, 8)), np.ones((n, 1))], 1)
    t0 = time.perf_counter()
    c = CSRTrie.from_sequences(seqs, vocab_size=4101)
    elapsed = time.perf_counter() - t0
    assert c.num_sequences == len(np.unique(seqs, axis=0))
    assert c.max_len == 10
    assert c.memory_bytes() < 100 * n  # well under 100 bytes per identifier
    for r in (0, 12345, n - 1):
        assert c.node_of(seqs[r].tolist()) >= 0
    print(f"100k ids: built in {elapsed:.2f}s, {c.memory_bytes() / 2**20:.1f} MiB, {c.num_nodes} nodes")
