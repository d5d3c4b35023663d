"""genretr.identifiers.genius: GENIUS modality-decoupled identifiers (Sec. 4.2, Tables 4, 11)."""
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from genretr.errors import GenretrError
from genretr.identifiers.genius import GeniusIdentifier
from genretr.quantizers.modality_decoupled import MODALITIES, ModalityDecoupledQuantizer
from genretr.identifiers.base import IdentifierContext

N, D = 90, 16
SMALL = dict(num_levels=3, codebook_size=8, fusion_hidden=32, epochs=2, batch_size=32, seed=0)


@pytest.fixture(scope="module")
def data():
    g = np.random.default_rng(0)
    topics = g.normal(size=(6, D))
    x = topics[g.integers(6, size=N)] + 0.3 * g.normal(size=(N, D))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    items = [SimpleNamespace(id=f"it{i}", modality=MODALITIES[i % 3]) for i in range(N)]
    rows = np.repeat(np.arange(N), 2)
    q = x[rows] + 0.1 * g.normal(size=(len(rows), D))
    return items, x.astype(np.float32), q.astype(np.float32), [f"it{r}" for r in rows]


def ctx(data, workdir, **extra):
    _, _, q, targets = data
    return IdentifierContext(train_texts=[], workdir=workdir, seed=0, progress=False, train_query_vecs=q,
                           train_query_items=targets, train_query_tasks=["t2i"] * len(targets), **extra)


@pytest.fixture(scope="module")
def genius(data, tmp_path_factory):
    items, x, _, _ = data
    wd = tmp_path_factory.mktemp("genius")
    scheme = GeniusIdentifier(**SMALL)
    return scheme, scheme.build(items, x, ctx(data, wd)), wd


def test_first_token_is_the_modality_for_every_item(genius, data):
    _, table, _ = genius
    items = data[0]
    for it in items:
        w = table.text(it.id).split()
        assert w[0] == f"m{MODALITIES.index(it.modality)}"
        assert len(w) == 3 and re.fullmatch(r"q1_\d+", w[1]) and re.fullmatch(r"q2_\d+", w[2])
    assert table.sequences.shape == (N, 4)
    assert table.vocab[2:5] == ["m0", "m1", "m2"] and table.vocab_size == 2 + 3 + 2 * 8
    assert table.new_tokens == table.vocab[2:]  # an MLLM adds each as one token


def test_collisions_are_kept_and_reported(genius, data):
    scheme, table, wd = genius
    stats = json.loads((wd / "genius_stats.json").read_text())
    assert stats["items_in_collisions"] == table.collisions() == scheme.stats["items_in_collisions"]
    assert stats["modality_accuracy"] == 1.0 and len(stats["usage"]) == 3 and stats["train_pairs"] == 2 * N
    shared = [s for s in {tuple(r) for r in table.sequences.tolist()} if len(table.items_of(s)) > 1]
    assert sum(len(table.items_of(s)) for s in shared) == table.collisions()


def test_saved_quantizer_reproduces_the_codes(genius, data):
    _, table, wd = genius
    items, x, _, _ = data
    saved = torch.load(wd / "genius_quantizer.pt")
    model = ModalityDecoupledQuantizer(**saved["hparams"])
    model.load_state_dict(saved["state_dict"])
    codes = model.encode_items(torch.from_numpy(x), [it.modality for it in items])
    texts = [" ".join([f"m{c[0]}"] + [f"q{m}_{v}" for m, v in enumerate(c) if m > 0]) for c in codes.tolist()]
    assert texts == [table.text(it.id) for it in items]


def test_unique_suffix_disambiguates(data, tmp_path):
    items, x, _, _ = data
    scheme = GeniusIdentifier(**{**SMALL, "codebook_size": 2, "unique_suffix": True})
    table = scheme.build(items, x, ctx(data, tmp_path))
    assert scheme.stats["items_in_collisions"] > 0  # 3 x 2 x 2 codes for 90 items
    assert table.collisions() == 0 and table.sequences.shape == (N, 5)
    assert all(re.fullmatch(r"m\d q1_\d q2_\d u\d+", table.text(it.id)) for it in items)


def test_ablation_and_shared_configs(data, tmp_path):
    items, x, _, _ = data
    scheme = GeniusIdentifier(**{**SMALL, "modality_decoupled": False})
    table = scheme.build(items, x, ctx(data, tmp_path))
    assert all(re.fullmatch(r"q0_\d q1_\d+ q2_\d+", table.text(it.id)) for it in items)
    assert scheme.model.quantizer.fixed_levels == ()
    shared = GeniusIdentifier(**{**SMALL, "shared": True})
    shared.build(items, x, ctx(data, tmp_path))
    assert shared.model.quantizer.level_book == [0, 1, 1]


def test_deterministic_given_seed(genius, data, tmp_path):
    _, table, _ = genius
    items, x, _, _ = data
    again = GeniusIdentifier(**SMALL).build(items, x, ctx(data, tmp_path))
    assert np.array_equal(again.sequences, table.sequences)


def test_bad_context_and_input(data, tmp_path):
    items, x, _, _ = data
    with pytest.raises(GenretrError, match="train_query_vecs"):
        GeniusIdentifier(**SMALL).build(items, x, IdentifierContext(train_texts=[], workdir=tmp_path))
    with pytest.raises(GenretrError, match="no training query"):
        GeniusIdentifier(**SMALL).build(items, x, IdentifierContext(
            workdir=tmp_path, train_query_vecs=np.zeros((2, D), np.float32), train_query_items=["zz", "yy"]))
    with pytest.raises(GenretrError, match="one 16-d row"):
        GeniusIdentifier(**SMALL).build(items, x, IdentifierContext(
            workdir=tmp_path, train_query_vecs=np.zeros((3, D), np.float32), train_query_items=["it0", "it1"]))
    odd = [SimpleNamespace(id=it.id, modality="audio") for it in items]
    with pytest.raises(GenretrError, match="modality"):
        GeniusIdentifier(**SMALL).build(odd, x, ctx(data, tmp_path))
