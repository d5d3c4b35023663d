"""genretr.identifiers.string.StringIdentifier (GRACE string IDs)."""
from types import SimpleNamespace

import pytest

from genretr.data.shapes import build_shapes
from genretr.identifiers.base import EOS, IdentifierContext, PAD, SPECIAL_TOKENS
from genretr.identifiers.string import StringIdentifier

N = 500


@pytest.fixture(scope="module")
def texts():
    ds = build_shapes(seed=0, splits={"train": 20})
    return [q.text for q in ds.queries("train", "t2i")]


@pytest.fixture(scope="module")
def items():
    return [SimpleNamespace(id=f"item{i}") for i in range(N)]


def build(items, texts, workdir, **kw):
    workdir.mkdir(parents=True, exist_ok=True)
    return StringIdentifier(**kw).build(items, None, IdentifierContext(train_texts=texts, workdir=workdir))


def number_of(table, iid) -> str:
    """Join the identifier's vocab pieces back into the number string (byte-level 'Ġ' markers dropped)."""
    pieces = [table.vocab[t] for t in table.tokens(iid)[:-1]]
    return "".join(pieces).replace("Ġ", "")


@pytest.fixture(scope="module")
def table(items, texts, tmp_path_factory):
    return build(items, texts, tmp_path_factory.mktemp("string0"), seed=0)


def test_ids_are_a_permutation_of_1_to_n(table, items):
    assert table.item_ids == [it.id for it in items]
    numbers = [number_of(table, it.id) for it in items]
    assert all(s.isdigit() and not s.startswith("0") for s in numbers), numbers[:10]
    assert sorted(int(s) for s in numbers) == list(range(1, N + 1))
    # text() is the space-joined pieces of the same number
    assert all(table.text(it.id).replace(" ", "").replace("Ġ", "") == s for it, s in zip(items, numbers))


def test_ids_are_unique_and_well_formed(table, items):
    assert table.collisions() == 0
    assert len({table.tokens(it.id) for it in items}) == N
    assert table.vocab[:2] == SPECIAL_TOKENS
    for it in items:
        toks = table.tokens(it.id)
        assert toks[-1] == EOS and EOS not in toks[:-1] and PAD not in toks
        assert table.items_of(toks) == [it.id]
    # the table's vocabulary holds exactly the special tokens and the pieces used
    used = {t for it in items for t in table.tokens(it.id)[:-1]}
    assert used == set(range(2, table.vocab_size))
    assert len(set(table.vocab)) == table.vocab_size


def test_external_tokenizer_splits_the_numbers(items, texts, tmp_path):
    """With `tokenizer=PATH`, that tokenizer's pieces are the identifier tokens."""
    from genretr.data.tokenizer import save, train_bpe

    tok = train_bpe(texts + [str(n) for n in range(1, N + 1)], vocab_size=600, min_frequency=1)
    save(tok, tmp_path / "tok.json")
    t = build(items, [], tmp_path / "b", seed=0, tokenizer=str(tmp_path / "tok.json"))
    assert t.collisions() == 0
    assert sorted(int(number_of(t, it.id)) for it in items) == list(range(1, N + 1))
    assert any(len(t.tokens(it.id)) - 1 > 1 for it in items)  # some numbers split into pieces


def test_deterministic_per_seed(table, items, texts, tmp_path):
    again = build(items, texts, tmp_path / "again", seed=0)
    assert again.vocab == table.vocab
    assert (again.sequences == table.sequences).all()
    other = build(items, texts, tmp_path / "other", seed=1)
    a = [number_of(table, it.id) for it in items]
    b = [number_of(other, it.id) for it in items]
    assert sorted(map(int, b)) == list(range(1, N + 1))
    assert sum(x != y for x, y in zip(a, b)) > 0.9 * N


def test_numbers_are_chunked_like_llama3(items, texts, tmp_path):
    """Default: left-to-right chunks of 3 digits ("13768" -> "137", "68")."""
    from genretr.identifiers.string import chunk_number

    assert chunk_number("13768", 3) == ["137", "68"]
    t = build([SimpleNamespace(id=f"x{i}") for i in range(1200)], texts, tmp_path, seed=0)
    lens = {len(t.tokens(f"x{i}")) - 1 for i in range(1200)}
    assert lens == {1, 2}
    assert all(len(t.vocab[p]) <= 3 for p in range(2, t.vocab_size))
    t2 = build(items, texts, tmp_path / "two", seed=0, chunk_digits=2)
    assert max(len(t2.tokens(it.id)) - 1 for it in items) == 2  # 500 -> "50", "0"
