"""genretr.identifiers.structured (GRACE structured IDs: hierarchical k-means, Sec. 3.3 / DSI)."""
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest

from genretr.errors import GenretrError
from genretr.identifiers.base import IdentifierContext, SPECIAL_TOKENS
from genretr.identifiers.structured import StructuredIdentifier
from genretr.quantizers.clustering import kmeans

CTX = IdentifierContext(train_texts=[], workdir=None)


def blobs(n_blobs=4, per=150, d=8, spread=0.05, seed=0):
    """Unit vectors around `n_blobs` well-separated directions; also each row's blob."""
    rng = np.random.default_rng(seed)
    centers = np.eye(d)[:n_blobs]
    label = np.repeat(np.arange(n_blobs), per)
    x = centers[label] + spread * rng.normal(size=(len(label), d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), label


def items_for(x):
    return [SimpleNamespace(id=f"i{i}") for i in range(len(x))]


def paths(table, items):
    return [[table.vocab[t] for t in table.tokens(it.id)[:-1]] for it in items]


@pytest.fixture(scope="module")
def built():
    x, label = blobs()
    items = items_for(x)
    return StructuredIdentifier(k=4, c=10, seed=0).build(items, x, CTX), items, x, label


def test_unique_and_a_proper_tree(built):
    table, items, _, _ = built
    assert table.collisions() == 0
    ps = [tuple(p) for p in paths(table, items)]
    assert len(set(ps)) == len(items)
    # a node is either split into clusters or a leaf of numbered items: no identifier is a prefix of another
    prefixes = {p[:l] for p in ps for l in range(1, len(p))}
    assert not prefixes & set(ps)
    for p in ps:  # level l's token is "C_l_j"
        assert [t.split("_")[1] for t in p] == [str(l) for l in range(1, len(p) + 1)]
    used = {t for p in ps for t in p}
    assert table.vocab == SPECIAL_TOKENS + sorted(used, key=lambda t: tuple(map(int, t.split("_")[1:])))
    assert table.new_tokens == table.vocab[2:]
    assert max(len(p) for p in ps) >= 3  # 150-item blobs split at least twice under c=10


def test_leaves_hold_at_most_c_items(built):
    table, items, _, _ = built
    leaves = defaultdict(list)
    for p in paths(table, items):
        leaves[tuple(p[:-1])].append(int(p[-1].split("_")[2]))
    assert max(len(v) for v in leaves.values()) <= 10
    assert all(sorted(v) == list(range(len(v))) for v in leaves.values())  # positions 0..size-1


def test_clusters_follow_the_embeddings(built):
    """Top-level clusters are the blobs; deeper, items sharing a prefix are nearer each other than to the rest."""
    table, items, x, label = built
    ps = paths(table, items)
    first = np.array([p[0] for p in ps])
    for b in range(4):
        assert len(set(first[label == b])) == 1
    assert len(set(first)) == 4
    second = np.array(["/".join(p[:2]) for p in ps])
    inside, outside = [], []
    for g in set(second):
        m = second == g
        c = x[m].mean(0)
        same_blob = label == label[m][0]
        inside.append(np.linalg.norm(x[m] - c, axis=1).mean())
        outside.append(np.linalg.norm(x[same_blob & ~m] - c, axis=1).mean())
    assert np.mean(inside) < 0.8 * np.mean(outside)


def test_sklearn_backend_and_determinism(built):
    table, items, x, label = built
    again = StructuredIdentifier(k=4, c=10, seed=0).build(items, x, CTX)
    assert (again.sequences == table.sequences).all() and again.vocab == table.vocab
    sk = StructuredIdentifier(k=4, c=10, seed=0, backend="sklearn").build(items, x, CTX)
    assert sk.collisions() == 0
    first = np.array([p[0] for p in paths(sk, items)])
    assert all(len(set(first[label == b])) == 1 for b in range(4))


def test_identical_vectors_still_get_unique_ids():
    x = np.tile(np.eye(4, dtype=np.float32)[:1], (50, 1))
    t = StructuredIdentifier(k=3, c=5).build(items_for(x), x, CTX)
    assert t.collisions() == 0
    assert max(len(t.tokens(f"i{i}")) for i in range(50)) <= 5


def test_small_sets_and_bad_input():
    x, _ = blobs(per=2)
    t = StructuredIdentifier(k=30, c=30).build(items_for(x), x, CTX)  # 8 items <= c: one leaf
    assert [t.text(f"i{i}") for i in range(8)] == [f"C_1_{i}" for i in range(8)]
    with pytest.raises(GenretrError, match="one embedding per item"):
        StructuredIdentifier().build(items_for(x), x[:5], CTX)
    with pytest.raises(GenretrError, match="backend=annoy"):
        StructuredIdentifier(backend="annoy")
    with pytest.raises(GenretrError, match="k=40"):
        kmeans(x, 40)


def test_assign_routes_new_items_down_the_saved_tree(tmp_path):
    """Issue 19: the tree is saved; a new item copying a built item's vector takes that item's cluster path and
    the leaf's next free position; a leaf whose next position the decoder never saw is refused in one line."""
    x, _ = blobs()
    items = items_for(x)
    scheme = StructuredIdentifier(k=4, c=10, seed=0)
    table = scheme.build(items, x, IdentifierContext(train_texts=[], workdir=tmp_path))
    saved = IdentifierContext(workdir=tmp_path)  # what genretr.add gives assign
    chosen = [0, 1, 151, 300, 451]
    new = [SimpleNamespace(id=f"new{r}") for r in chosen]
    added = scheme.assign(new, x[chosen], saved, table)
    assert added.vocab == table.vocab
    leaf_size = defaultdict(int)
    for p in paths(table, items):
        leaf_size[tuple(p[:-1])] += 1
    taken = defaultdict(int)
    for r, n in zip(chosen, new):
        leaf = tuple(paths(table, [items[r]])[0][:-1])
        level = len(leaf) + 1
        assert paths(added, [n])[0] == [*leaf, f"C_{level}_{leaf_size[leaf] + taken[leaf]}"]
        taken[leaf] += 1
    both = table.joined([table, added])  # identifiers stay unique, also against earlier additions
    assert both.collisions() == 0
    again = scheme.assign([SimpleNamespace(id="again")], x[[0]], saved, both)
    leaf = tuple(paths(table, [items[0]])[0][:-1])
    assert paths(again, [SimpleNamespace(id="again")])[0][-1] == f"C_{len(leaf) + 1}_{leaf_size[leaf] + taken[leaf]}"
    with pytest.raises(GenretrError, match="which the trained decoder has never seen"):  # a leaf holds <= c = 10
        grown = both
        for step in range(12):
            grown = table.joined([grown, scheme.assign([SimpleNamespace(id=f"g{step}")], x[:1], saved, grown)])
    with pytest.raises(GenretrError, match="no structured_tree.npz"):
        scheme.assign(new, x[chosen], IdentifierContext(workdir=tmp_path / "nowhere"), table)


def test_a_single_leaf_tree_assigns_positions(tmp_path):
    x = blobs(per=2)[0]  # 8 items <= c: the root is the leaf
    scheme = StructuredIdentifier(k=30, c=30)
    table = scheme.build(items_for(x), x, IdentifierContext(train_texts=[], workdir=tmp_path))
    saved = IdentifierContext(workdir=tmp_path)  # what genretr.add gives assign
    with pytest.raises(GenretrError, match="needs the token 'C_1_8'"):
        scheme.assign([SimpleNamespace(id="n")], x[:1], saved, table)
    assert table.text("i7") == "C_1_7"
    held = table.subset(table.item_ids[:7])  # the 8th position is free again
    gap = table.subset([*table.item_ids[:3], *table.item_ids[4:7]])  # position 3 free, 6 the last held
    assert [held.vocab[t] for t in scheme.assign([SimpleNamespace(id="n")], x[:1], saved, gap).tokens("n")[:-1]] \
        == ["C_1_7"]
    added = scheme.assign([SimpleNamespace(id="n")], x[:1], saved, held)
    assert [added.vocab[t] for t in added.tokens("n")[:-1]] == ["C_1_7"]


def test_identical_vectors_route_to_one_leaf_and_take_its_next_position(tmp_path):
    """The arbitrary split of identical vectors (4 leaves of 10 under the root) keeps routable centroids: a copy
    lands in a leaf and asks for its 11th position, which no item held (refused)."""
    x = np.tile(blobs()[0][:1], (40, 1))
    scheme = StructuredIdentifier(k=4, c=10)
    table = scheme.build(items_for(x), x, IdentifierContext(train_texts=[], workdir=tmp_path))
    assert {len(p) for p in paths(table, items_for(x))} == {2}
    with pytest.raises(GenretrError, match="needs the token 'C_2_10'"):
        scheme.assign([SimpleNamespace(id="n")], x[:1], IdentifierContext(workdir=tmp_path), table)
    held = table.subset([i for i in table.item_ids if table.text(i) != "C_1_0 C_2_9"])
    got = scheme.assign([SimpleNamespace(id="n")], x[:1], IdentifierContext(workdir=tmp_path), held)
    assert got.text("n") == "C_1_0 C_2_9"
