"""genretr.identifiers.cart: CART coarse-to-fine identifiers (Sec. 3.2, Table 4)."""
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from genretr.errors import GenretrError
from genretr.identifiers.base import EOS, IdentifierContext, SPECIAL_TOKENS
from genretr.identifiers.cart import CartIdentifier
from genretr.identifiers.common import unique_counters
from genretr.quantizers.clustering import hierarchical_kmeans

N, D = 150, 16
SMALL = dict(k=8, num_codebooks=2, codebook_size=8, latent_dim=8, hidden=[32, 16], epochs=3, warmup_epochs=1,
             batch_size=64, seed=0)


@pytest.fixture(scope="module")
def data():
    g = np.random.default_rng(0)
    centers = g.normal(size=(10, D))
    x = centers[g.integers(10, size=N)] + 0.3 * g.normal(size=(N, D))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return [SimpleNamespace(id=f"img{i}", modality="image") for i in range(N)], x.astype(np.float32)


def ctx(tmp_path):
    return IdentifierContext(train_texts=[], workdir=tmp_path, seed=0, progress=False)


def words(table, iid):
    return table.text(iid).split()


@pytest.fixture(scope="module")
def cart(data, tmp_path_factory):
    items, x = data
    wd = tmp_path_factory.mktemp("cart")
    scheme = CartIdentifier(**SMALL)
    return scheme, scheme.build(items, x, ctx(wd)), wd


def test_identifiers_are_unique_with_coarse_fine_unique_tokens(cart, data):
    scheme, table, wd = cart
    items, _ = data
    assert table.collisions() == 0 and len({table.tokens(it.id) for it in items}) == N
    assert table.sequences.shape == (N, 2 + 2 + 1)  # k, v1, v2, u, EOS
    pattern = [r"c\d+", r"a1_\d+", r"a2_\d+", r"u\d+"]
    for it in items:
        w = words(table, it.id)
        assert len(w) == 4 and all(re.fullmatch(p, t) for p, t in zip(pattern, w)), w
        assert table.tokens(it.id)[-1] == EOS
    assert table.vocab[:2] == SPECIAL_TOKENS and len(set(table.vocab)) == table.vocab_size
    assert table.new_tokens == table.vocab[2:]  # an MLLM adds each as one token
    # the unique token counts items sharing the same (k, v1, v2), in order
    prefixes = [tuple(words(table, it.id)[:3]) for it in items]
    assert [int(words(table, it.id)[3][1:]) for it in items] == unique_counters(prefixes)
    # side artifacts: stats with codebook usage, the RQ-VAE, the coarse centroids
    stats = json.loads((wd / "cart_stats.json").read_text())
    assert stats == scheme.stats and len(stats["fine_usage"]) == 2 and stats["coarse_clusters"] == 8
    assert (wd / "rqvae.pt").exists() and np.load(wd / "cart_centroids.npy").shape == (8, D)


def test_coarse_token_is_the_kmeans_cluster(cart, data):
    _, table, wd = cart
    items, x = data
    centroids = np.load(wd / "cart_centroids.npy")
    coarse = np.array([int(words(table, it.id)[0][1:]) for it in items])
    nearest = ((x[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (coarse == nearest).mean() > 0.95


def test_unique_counters_count_prefix_occurrences():
    assert unique_counters([(1, 2), (1, 2), (3,), (1, 2), (3,)]) == [0, 1, 0, 2, 1]


def test_without_kmeans_the_rqvae_codes_the_embedding(data, tmp_path):
    items, x = data
    table = CartIdentifier(**{**SMALL, "use_kmeans": False}).build(items, x, ctx(tmp_path))
    assert table.sequences.shape == (N, 2 + 1 + 1)
    assert not any(t.startswith("c") for t in table.vocab[2:]) and table.collisions() == 0
    assert all(re.fullmatch(r"a1_\d+ a2_\d+ u\d+", table.text(it.id)) for it in items)


def test_without_rqvae_fine_tokens_are_a_kmeans_tree(data, tmp_path):
    items, x = data
    scheme = CartIdentifier(**{**SMALL, "use_rqvae": False})
    table = scheme.build(items, x, ctx(tmp_path))
    assert table.sequences.shape == (N, 5) and table.collisions() == 0
    assert not (tmp_path / "rqvae.pt").exists() and "rqvae_recon_mse" not in scheme.stats
    coarse = np.array([int(words(table, it.id)[0][1:]) for it in items])
    for c in np.unique(coarse):  # within a coarse cluster, level 1 is a k-means of its members
        rows = np.flatnonzero(coarse == c)
        expect = hierarchical_kmeans(x[rows], 2, 8, 0)
        got = np.array([[int(w.split("_")[1]) for w in words(table, items[r].id)[1:3]] for r in rows])
        assert np.array_equal(got, expect)
    tree = hierarchical_kmeans(x, 2, 4, 0)
    for a in range(4):  # level 2 splits each level-1 cluster separately: at most 4 children each
        assert len(np.unique(tree[tree[:, 0] == a, 1])) <= 4
    with pytest.raises(GenretrError, match="both"):
        CartIdentifier(use_kmeans=False, use_rqvae=False)


def test_k_is_clamped_to_the_number_of_items(tmp_path):
    g = np.random.default_rng(1)
    items = [SimpleNamespace(id=f"x{i}", modality="image") for i in range(5)]
    x = g.normal(size=(5, D)).astype(np.float32)
    table = CartIdentifier(**{**SMALL, "k": 128, "use_rqvae": False}).build(items, x, ctx(tmp_path))
    coarse_vocab = [t for t in table.vocab if t.startswith("c")]
    assert len(coarse_vocab) == 5 and sorted(words(table, it.id)[0] for it in items) == sorted(coarse_vocab)


def test_faiss_backend_and_bad_input(data, tmp_path):
    items, x = data
    table = CartIdentifier(**{**SMALL, "backend": "faiss", "use_rqvae": False}).build(items, x, ctx(tmp_path))
    assert table.collisions() == 0 and table.sequences.shape == (N, 5)
    with pytest.raises(GenretrError, match="backend"):
        CartIdentifier(backend="annoy")
    with pytest.raises(GenretrError, match="embeddings"):
        CartIdentifier(**SMALL).build(items, x[:-1], ctx(tmp_path))


def test_deterministic_given_seed(cart, data, tmp_path):
    _, table, _ = cart
    items, x = data
    again = CartIdentifier(**SMALL).build(items, x, ctx(tmp_path))
    assert again.vocab == table.vocab and np.array_equal(again.sequences, table.sequences)


def test_new_items_take_their_originals_codes_and_the_next_counters(cart, data):
    """genretr.add (issue 19): copies of built items get the same coarse and fine codes from the saved centroids
    and RQ-VAE, and the unique token that continues their prefix's count (CART Sec. 3.2.3); a count past the
    unique tokens the decoder was trained with is one line."""
    from collections import Counter

    from genretr.data.schema import Item

    scheme, table, wd = cart
    saved = IdentifierContext(workdir=wd)  # what genretr.add gives assign
    items, x = data
    held = Counter(tuple(words(table, it.id)[:-1]) for it in items)
    top = max(int(t[1:]) for t in table.vocab if re.fullmatch(r"u\d+", t))
    fits = [r for r, it in enumerate(items) if held[tuple(words(table, it.id)[:-1])] <= top]
    chosen = [r for k, r in enumerate(fits) if tuple(words(table, items[r].id)[:-1]) not in
              {tuple(words(table, items[f].id)[:-1]) for f in fits[:k]}][:6]  # distinct prefixes with room
    assert len(chosen) >= 2
    new = [Item(f"new{r}", "image") for r in chosen]
    added = scheme.assign(new, x[chosen], saved, table)
    assert added.vocab == table.vocab
    for r, n in zip(chosen, new):
        prefix = tuple(words(table, items[r].id)[:-1])
        assert tuple(words(added, n.id)[:-1]) == prefix and words(added, n.id)[-1] == f"u{held[prefix]}"
    full = next(r for r, it in enumerate(items) if held[tuple(words(table, it.id)[:-1])] == top + 1)
    with pytest.raises(GenretrError, match=f"needs the token 'u{top + 1}', which the trained decoder has never"):
        scheme.assign([Item("full", "image")], x[[full]], saved, table)
    with pytest.raises(GenretrError, match="use_rqvae=false keeps no model"):
        CartIdentifier(**{**SMALL, "use_rqvae": False}).assign(new, x[chosen], saved, table)
