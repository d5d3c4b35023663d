"""genretr.identifiers.numeric.NumericIdentifier (GRACE numeric IDs, Sec. 3.3)."""
from types import SimpleNamespace

import pytest

from genretr.errors import GenretrError
from genretr.identifiers.base import EOS, IdentifierContext, SPECIAL_TOKENS
from genretr.identifiers.numeric import NumericIdentifier
from genretr.identifiers.string import StringIdentifier

N = 1234
CTX = IdentifierContext(train_texts=[], workdir=None)


@pytest.fixture(scope="module")
def items():
    return [SimpleNamespace(id=f"item{i}") for i in range(N)]


@pytest.fixture(scope="module")
def table(items):
    return NumericIdentifier(seed=0).build(items, None, CTX)


def number_of(table, iid) -> int:
    digits = [table.vocab[t] for t in table.tokens(iid)[:-1]]
    assert all(len(d) == 1 and d.isdigit() for d in digits), digits
    return int("".join(digits))


def test_digits_round_trip_to_a_permutation_of_1_to_n(table, items):
    assert table.vocab == SPECIAL_TOKENS + [str(d) for d in range(10)]
    numbers = [number_of(table, it.id) for it in items]
    assert sorted(numbers) == list(range(1, N + 1))
    assert all(table.text(it.id) == " ".join(str(n)) for it, n in zip(items, numbers))  # "1 3 7 6 8"
    assert {len(table.tokens(it.id)) - 1 for it in items} == {1, 2, 3, 4}  # unpadded: 1..1234
    assert table.collisions() == 0
    for it in items[:50]:
        assert table.tokens(it.id)[-1] == EOS and table.items_of(table.tokens(it.id)) == [it.id]


def test_same_numbering_as_the_string_identifier(table, items):
    for seed in (0, 3):
        num = table if seed == 0 else NumericIdentifier(seed=seed).build(items, None, CTX)
        st = StringIdentifier(seed=seed).build(items, None, CTX)
        assert all(str(number_of(num, it.id)) == st.text(it.id).replace(" ", "") for it in items)
    other = NumericIdentifier(seed=1).build(items, None, CTX)
    assert sum(number_of(other, it.id) != number_of(table, it.id) for it in items) > 0.9 * N


def test_zero_pad_gives_fixed_length(items):
    t = NumericIdentifier(seed=0, zero_pad=True).build(items, None, CTX)
    assert {len(t.tokens(it.id)) for it in items} == {5}  # 4 digits + EOS
    plain = NumericIdentifier(seed=0).build(items, None, CTX)
    assert all(t.text(it.id).replace(" ", "") == plain.text(it.id).replace(" ", "").zfill(4) for it in items)


def test_no_items_is_an_error():
    with pytest.raises(GenretrError, match="no items"):
        NumericIdentifier().build([], None, CTX)
