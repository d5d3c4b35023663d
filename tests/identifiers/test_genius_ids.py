"""genretr.identifiers.genius: GENIUS modality-decoupled identifiers (Sec. 4.2, Tables 4, 11)."""
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from genretr.data.schema import item_side
from genretr.errors import GenretrError
from genretr.identifiers.genius import GeniusIdentifier
from genretr.quantizers.modality_decoupled import MODALITIES, ModalityDecoupledQuantizer, modality_agreement
from genretr.identifiers.base import IdentifierContext

N, D = 90, 16
SMALL = dict(num_levels=3, codebook_size=8, fusion_hidden=32, epochs=2, batch_size=32, seed=0, modality_code="given")


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


def test_modality_code_strategies_and_shared_configs(data, tmp_path):
    items, x, _, _ = data
    learned = GeniusIdentifier(**{**SMALL, "modality_code": "learned"})
    table = learned.build(items, x, ctx(data, tmp_path))
    assert all(re.fullmatch(r"m\d q1_\d+ q2_\d+", table.text(it.id)) for it in items)
    assert learned.model.quantizer.fixed_levels == ()
    first = [int(table.text(it.id).split()[0][1:]) for it in items]  # the stats count the table's own first codes
    assert learned.stats["modality_agreement"] == modality_agreement(np.array(first)[:, None],
                                                                    [it.modality for it in items])
    none = GeniusIdentifier(**{**SMALL, "modality_code": "none"})
    table = none.build(items, x, ctx(data, tmp_path))
    assert all(re.fullmatch(r"q1_\d+ q2_\d+", table.text(it.id)) for it in items)
    assert table.vocab_size == 2 + 2 * 8 and none.stats["modality_agreement"] is None
    classifier = GeniusIdentifier(**{**SMALL, "modality_code": "classifier"})
    table = classifier.build(items, x, ctx(data, tmp_path))
    assert table.vocab[2:5] == ["m0", "m1", "m2"] and table.sequences.shape == (N, 4)
    added = classifier.assign(items[:5], x[:5], IdentifierContext(workdir=tmp_path), table)
    assert [added.text(it.id) for it in items[:5]] == [table.text(it.id) for it in items[:5]]
    shared = GeniusIdentifier(**{**SMALL, "shared": True})
    shared.build(items, x, ctx(data, tmp_path))
    assert shared.model.quantizer.level_book == [0, 1, 1]


def test_a_querys_pairs_are_one_group(data, tmp_path, monkeypatch):
    """Pairs of one query reach the quantizer as one group (its other targets are not negatives)."""
    import genretr.identifiers.genius as G

    seen = {}
    real = G.fit_modality_decoupled

    def spy(*args, query_groups=None, **kw):
        seen["groups"] = query_groups
        return real(*args, query_groups=query_groups, **kw)

    monkeypatch.setattr(G, "fit_modality_decoupled", spy)
    items, x, _, targets = data
    ids = [f"q{j // 2}" for j in range(len(targets))]  # the fixture's two pairs per item: one query each
    GeniusIdentifier(**SMALL).build(items, x, ctx(data, tmp_path, train_query_ids=ids))
    assert list(seen["groups"]) == [j // 2 for j in range(len(targets))]
    with pytest.raises(GenretrError, match="train_query_ids"):
        GeniusIdentifier(**SMALL).build(items, x, ctx(data, tmp_path, train_query_ids=ids[:-1]))


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


def test_fusion_inputs_put_each_side_in_its_place():
    from genretr.identifiers.genius import fusion_inputs

    v = np.arange(10, dtype=np.float32).reshape(5, 2) + 1
    asked = []

    def pair_parts(sides):  # each pair's parts, told apart by its image index
        asked.append(sides)
        return np.array([[[image, image], [-image, -image]] for image, _ in sides], dtype=np.float32)

    sides = [(7, "a fox"), (0, None), (None, "a cat"), (4, "a dog"), (None, "an owl")]
    out = fusion_inputs(v, sides, pair_parts)
    assert out.tolist() == [[[7, 7], [-7, -7]], [[3, 4], [0, 0]], [[0, 0], [5, 6]], [[4, 4], [-4, -4]],
                            [[0, 0], [9, 10]]]
    assert asked == [[(7, "a fox"), (4, "a dog")]]  # only the rows with both sides are embedded again


def test_pair_items_are_fused_from_their_parts_and_added_alike(data, tmp_path):
    items, x, q, targets = data
    g = np.random.default_rng(1)
    image_part = {i: (x[i] + 0.2 * g.normal(size=D)).astype(np.float32) for i in range(N)}
    text_part = {i: (x[i] - 0.2 * g.normal(size=D)).astype(np.float32) for i in range(N)}
    items = [SimpleNamespace(id=it.id, modality=it.modality, image=i, text=f"text {i}") for i, it in enumerate(items)]
    calls = []

    def pair_parts(sides):
        calls.append(len(sides))
        return np.stack([np.stack([image_part[image], text_part[int(text.split()[1])]]) for image, text in sides])

    scheme = GeniusIdentifier(**SMALL)
    table = scheme.build(items, x, ctx(data, tmp_path, pair_parts=pair_parts,
                                       train_query_sides=[(None, "q")] * len(targets)))
    assert calls == [N // 3]  # the pair items (every third), asked once for training and coding; queries text only
    assert torch.load(tmp_path / "genius_quantizer.pt")["fused_parts"] is True
    added = scheme.assign(items, x, IdentifierContext(workdir=tmp_path, pair_parts=pair_parts), table)
    assert [added.text(it.id) for it in items] == [table.text(it.id) for it in items]
    with pytest.raises(GenretrError, match="pair items need the run's encoder"):
        scheme.assign(items, x, IdentifierContext(workdir=tmp_path), table)
    saved = torch.load(tmp_path / "genius_quantizer.pt")
    saved["hparams"] = {("modality_decoupled" if k == "modality_code" else k): v for k, v in saved["hparams"].items()}
    torch.save(saved, tmp_path / "genius_quantizer.pt")  # as an older genretr saved it
    with pytest.raises(GenretrError, match="older genretr"):
        scheme.assign(items, x, IdentifierContext(workdir=tmp_path, pair_parts=pair_parts), table)


def test_decoder_space_is_the_space_the_identifiers_were_learned_in(data, tmp_path):
    """Eq. 9: the decoder reads z = h(image, text) / ||h|| of the trained quantizer (the authors'
    `quantizer.inference(...)['encode']`), so an item's mapped vector quantizes to its own identifier."""
    items, x, q, targets = data
    g = np.random.default_rng(2)
    parts = {i: np.stack([x[i] + 0.2 * g.normal(size=D), x[i] - 0.2 * g.normal(size=D)]).astype(np.float32)
             for i in range(N)}
    items = [SimpleNamespace(id=it.id, modality=it.modality, image=i, text=f"text {i}") for i, it in enumerate(items)]

    def pair_parts(sides):
        return np.stack([parts[int(text.split()[1])] for _, text in sides])

    scheme = GeniusIdentifier(**{**SMALL, "modality_code": "learned"})
    table = scheme.build(items, x, ctx(data, tmp_path, pair_parts=pair_parts,
                                       train_query_sides=[(None, "q")] * len(targets)))
    space = scheme.decoder_space(tmp_path)
    sides = [item_side(it) for it in items]
    z = space(torch.from_numpy(x), sides, pair_parts)
    model = space.model
    text_row, pair_row = 1, 2  # MODALITIES: image, text, image-text pair
    with torch.no_grad():
        v = torch.from_numpy(x[[text_row]])
        assert torch.allclose(z[text_row], torch.nn.functional.normalize(model.fusion(torch.zeros_like(v), v))[0],
                              atol=1e-6)
        p = torch.from_numpy(parts[pair_row])
        assert torch.allclose(z[pair_row], torch.nn.functional.normalize(model.fusion(p[:1], p[1:]))[0], atol=1e-6)
        codes = model.quantize(z, torch.zeros(N, dtype=torch.long))[1]
    assert torch.allclose(z.norm(dim=1), torch.ones(N))
    spelled = [" ".join([f"m{c[0]}"] + [f"q{m}_{v}" for m, v in enumerate(c[1:], 1)]) for c in codes.tolist()]
    assert spelled == [table.text(it.id) for it in items]
    assert not torch.allclose(z, torch.from_numpy(x), atol=1e-2)  # another space than the encoder's
    assert GeniusIdentifier(**{**SMALL, "decoder_input": "encoder"}).decoder_space(tmp_path) is None
    with pytest.raises(GenretrError, match="decoder_input=prefix is not one of fused, encoder"):
        GeniusIdentifier(**{**SMALL, "decoder_input": "prefix"})


def test_quantizer_trained_on_inputs_gathered_by_batch_is_the_one_trained_on_every_input(data, tmp_path):
    """Issue 16's memory: build() gathers the (n, 2, d) fusion inputs of the training pairs a batch at a time and
    codes every item a block at a time; the quantizer and the codes are those of the inputs of every query and
    item made at once."""
    from genretr.identifiers.genius import FusionRows, fusion_inputs
    from genretr.quantizers.modality_decoupled import fit_modality_decoupled

    items, x, q, targets = data
    g = np.random.default_rng(3)
    parts = {i: np.stack([x[i] + 0.2 * g.normal(size=D), x[i] - 0.2 * g.normal(size=D)]).astype(np.float32)
             for i in range(N)}
    items = [SimpleNamespace(id=it.id, modality=it.modality, image=i if i % 3 != 1 else None,
                             text=f"text {i}" if i % 3 != 0 else None) for i, it in enumerate(items)]
    keep = np.random.default_rng(4).permutation(len(targets))[:40]  # unsorted targets, some twice
    qv, qt = q[keep], [targets[k] for k in keep]
    assert len(set(qt)) < len(qt) < N and sorted(qt) != qt

    def pair_parts(sides):
        return np.stack([parts[int(text.split()[1])] for _, text in sides])

    scheme = GeniusIdentifier(**SMALL)
    table = scheme.build(items, x, IdentifierContext(
        train_texts=[], workdir=tmp_path, seed=0, progress=False, train_query_vecs=qv, train_query_items=qt,
        train_query_tasks=["t2i"] * len(qt), pair_parts=pair_parts, train_query_sides=[(None, "q")] * len(qt)))
    sides = [item_side(it) for it in items]
    every = fusion_inputs(x, sides, pair_parts)
    blocks = FusionRows(x, sides, pair_parts)
    assert all(torch.equal(blocks[s:s + 7], torch.from_numpy(every[s:s + 7])) for s in range(0, N, 7))
    picked = [5, 0, 4, 4, 13]  # any entries, in any order; entry j reading row rows[j] of the vectors
    assert torch.equal(blocks[picked], torch.from_numpy(every[picked]))
    rows_of = np.array([3, 1, 4, 1, 5])
    mapped = FusionRows(x, [sides[r] for r in rows_of], pair_parts, rows=rows_of)
    assert torch.equal(mapped[[4, 2, 0]], torch.from_numpy(every[rows_of[[4, 2, 0]]]))
    rows = np.array([int(t[2:]) for t in qt])
    ref = fit_modality_decoupled(fusion_inputs(qv, [(None, "q")] * len(qv), pair_parts), rows, every,
                                 [it.modality for it in items], seed=0, max_epochs=SMALL["epochs"],
                                 batch_size=SMALL["batch_size"], **scheme.quantizer_kwargs)
    saved = torch.load(tmp_path / "genius_quantizer.pt")["state_dict"]
    assert saved.keys() == ref.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in ref.state_dict().items())
    codes = ref.encode_items(torch.from_numpy(every), [it.modality for it in items]).tolist()
    assert ref.encode_items(blocks, [it.modality for it in items], batch_size=7).tolist() == codes
    assert [table.text(it.id) for it in items] == [scheme._table(items, np.array(codes), None).text(it.id)
                                                   for it in items]
