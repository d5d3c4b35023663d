"""genretr.identifiers.base.IdTable: padding, EOS, lookups, collisions, subset, save/load."""
import numpy as np
import pytest

from genretr.identifiers.base import EOS, PAD, SPECIAL_TOKENS, IdTable

VOCAB = SPECIAL_TOKENS + ["a", "b", "c", "d"]  # ids 2..5


@pytest.fixture
def table():
    return IdTable.from_lists(["x", "y", "z"], [[2, 3], [4], [2, 3, 5]], VOCAB)


def test_special_tokens():
    assert (PAD, EOS) == (0, 1)
    assert SPECIAL_TOKENS == ["<pad>", "</s>"]


def test_from_lists_pads_and_appends_eos(table):
    assert table.sequences.dtype == np.int32
    assert table.sequences.tolist() == [[2, 3, EOS, PAD], [4, EOS, PAD, PAD], [2, 3, 5, EOS]]
    assert len(table) == 3 and table.vocab_size == len(VOCAB)
    assert table.new_tokens == []


def test_tokens_text_and_items_of(table):
    assert table.tokens("x") == (2, 3, EOS)
    assert table.tokens("y") == (4, EOS)
    assert table.tokens("z") == (2, 3, 5, EOS)
    assert table.text("x") == "a b"
    assert table.text("y") == "c"
    assert table.text("z") == "a b d"
    assert table.items_of([2, 3, EOS]) == ["x"]
    assert table.items_of((4, EOS, PAD, PAD)) == ["y"]  # padding is ignored
    assert table.items_of(np.array([2, 3, 5, EOS])) == ["z"]
    assert table.items_of([2, 3]) == []  # a prefix without EOS is no identifier
    assert table.items_of([2, EOS]) == []
    assert table.items_of([5, EOS]) == []
    for iid in table.item_ids:
        assert table.items_of(table.tokens(iid)) == [iid]
    assert table.collisions() == 0


def test_collisions_map_back_to_every_item():
    t = IdTable.from_lists(["p", "q", "r"], [[2, 3], [2, 3], [4]], VOCAB)
    assert t.items_of([2, 3, EOS]) == ["p", "q"]
    assert t.collisions() == 2
    t3 = IdTable.from_lists(["p", "q", "r", "s"], [[2], [2], [2], [3]], VOCAB)
    assert t3.items_of([2, EOS]) == ["p", "q", "r"]
    assert t3.collisions() == 3


def test_subset(table):
    sub = table.subset(["z", "x"])
    assert sub.item_ids == ["z", "x"]
    assert sub.tokens("z") == table.tokens("z") and sub.tokens("x") == table.tokens("x")
    assert sub.items_of([4, EOS]) == []  # y is gone
    assert sub.items_of([2, 3, EOS]) == ["x"]
    assert sub.vocab == table.vocab
    with pytest.raises(KeyError):
        sub.tokens("y")
    # a subset of colliding items keeps only the chosen ones
    t = IdTable.from_lists(["p", "q", "r"], [[2, 3], [2, 3], [4]], VOCAB)
    assert t.subset(["q", "r"]).items_of([2, 3, EOS]) == ["q"]
    assert t.subset(["q", "r"]).collisions() == 0


def test_save_load_round_trip(tmp_path, table):
    t = IdTable.from_lists(["x", "y", "z"], [[2, 3], [4], [2, 3, 5]], VOCAB, new_tokens=["c", "d"])
    t.save(tmp_path)
    back = IdTable.load(tmp_path)
    assert back.item_ids == t.item_ids
    assert np.array_equal(back.sequences, t.sequences) and back.sequences.dtype == np.int32
    assert back.vocab == t.vocab and back.new_tokens == ["c", "d"]
    for iid in t.item_ids:
        assert back.tokens(iid) == t.tokens(iid) and back.text(iid) == t.text(iid)
        assert back.items_of(t.tokens(iid)) == [iid]


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        IdTable(["a", "b"], np.array([[2, EOS]]), VOCAB)


def test_lazy_rows_are_computed_only_when_a_scheme_reads_them():
    from genretr.identifiers.base import LazyRows

    calls = []
    rows = LazyRows(lambda: calls.append(1) or np.arange(6, dtype=np.float64).reshape(3, 2), 3)
    assert len(rows) == 3 and calls == []  # built, sized, not computed
    x = np.asarray(rows, dtype=np.float32)
    assert x.dtype == np.float32 and x.shape == (3, 2) and calls == [1]
