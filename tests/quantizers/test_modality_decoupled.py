"""genretr.quantizers.modality_decoupled: GENIUS's quantizer (Sec. 4.2, Eq. 3-8)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genretr.errors import GenretrError
from genretr.quantizers.modality_decoupled import (MODALITIES, Fusion, ModalityDecoupledQuantizer,
                                                   fit_modality_decoupled, info_nce, modality_accuracy,
                                                   modality_agreement, modality_index)

D = 16
SMALL = dict(num_levels=3, codebook_size=8, fusion_hidden=32)


def toy(n_items=60, per_item=2, seed=0):
    """Items of three modalities around 5 topics, and noisy queries of each item."""
    g = np.random.default_rng(seed)
    topics = g.normal(size=(5, D))
    items = topics[g.integers(5, size=n_items)] + 0.2 * g.normal(size=(n_items, D))
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    modalities = [MODALITIES[i % 3] for i in range(n_items)]
    rows = np.repeat(np.arange(n_items), per_item)
    queries = items[rows] + 0.1 * g.normal(size=(len(rows), D))
    return queries.astype(np.float32), rows, items.astype(np.float32), modalities


def modal_toy(n_items=90, per_item=2, seed=0, offset=2.0):
    """As `toy`, but each modality's items (and the queries that ask for them, as instructions make them) are
    shifted along a direction of their own: the embedding carries the modality, as the paper's encoder does."""
    q, rows, items, mods = toy(n_items, per_item, seed)
    shift = np.random.default_rng(seed + 1).normal(size=(3, D)).astype(np.float32)
    shift = offset * shift / np.linalg.norm(shift, axis=1, keepdims=True)
    index = modality_index(mods).numpy()
    items = items + shift[index]
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    q = q + shift[index[rows]]
    return q.astype(np.float32), rows, items.astype(np.float32), mods


def test_fusion_starts_as_identity_and_mixes_with_a_gate():
    torch.manual_seed(0)
    f = Fusion(D, 32)
    x, y = torch.randn(5, D), torch.randn(5, D)
    assert torch.allclose(f(x, x), x, atol=1e-6)  # MLP output layer starts at zero: h(v, v) = v
    lam = torch.sigmoid(f.gate(torch.cat([x, y], -1)))
    assert lam.shape == (5, 1) and ((lam > 0) & (lam < 1)).all()
    assert torch.allclose(f(x, y), lam * x + (1 - lam) * y + f.mix(torch.cat([x, y], -1)))


def test_given_first_code_is_the_modality_by_construction():
    torch.manual_seed(0)
    q, rows, items, mods = toy()
    untrained = ModalityDecoupledQuantizer(D, modality_code="given", **SMALL)
    codes = untrained.encode_items(torch.from_numpy(items), mods)
    assert codes.shape == (len(items), 3)
    assert modality_accuracy(codes, mods) == 1.0
    assert torch.equal(codes[:, 0], modality_index(mods))
    model = fit_modality_decoupled(q, rows, items, mods, seed=0, max_epochs=2, batch_size=32, modality_code="given",
                                   **SMALL)
    assert modality_accuracy(model.encode_items(torch.from_numpy(items), mods), mods) == 1.0
    with pytest.raises(RuntimeError, match="not attached"):  # the fitted model keeps no trainer, nor its batches
        model.trainer
    # the modality codewords are learned as each modality's mean fused target vector (EMA)
    assert getattr(model.quantizer, "ready_0").all()
    with pytest.raises(GenretrError, match="modality"):
        modality_index(["image", "audio"])


def test_learned_first_level_finds_the_modality_only_when_the_embedding_carries_it():
    """The paper's default: an ordinary learned 3-entry level, nothing given.  Where instructions put modality in
    the vectors it becomes the modality; where they do not, it does not (so the agreement is a measurement)."""
    torch.manual_seed(0)
    m = ModalityDecoupledQuantizer(D, **SMALL)
    assert m.hparams.modality_code == "learned" and m.quantizer.fixed_levels == () and m.quantizer.sizes[0] == 3
    kw = dict(seed=0, max_epochs=3, batch_size=32, **SMALL)
    q, rows, items, mods = modal_toy()
    model = fit_modality_decoupled(q, rows, items, mods, **kw)
    codes = model.encode_items(torch.from_numpy(items), mods)
    z = model.embed(torch.from_numpy(items))
    assert torch.equal(codes[:, 0], ((z[:, None] - model.quantizer.codebooks[0][None]) ** 2).sum(-1).argmin(1))
    assert model.metrics(torch.from_numpy(items), mods, codes)["modality_agreement"] >= 0.95
    q, rows, items, mods = toy(90)
    blind = fit_modality_decoupled(q, rows, items, mods, **kw)
    assert modality_agreement(blind.encode_items(torch.from_numpy(items), mods), mods) < 0.8


def test_classifier_first_code_is_predicted_and_not_quantized():
    """Table 8's classifier-based modality encoding: a classifier's argmax, then M-1 levels quantizing z itself."""
    torch.manual_seed(0)
    q, rows, items, mods = modal_toy()
    model = fit_modality_decoupled(q, rows, items, mods, seed=0, max_epochs=10, batch_size=32, lr=1e-2,
                                   modality_code="classifier", **SMALL)
    assert model.quantizer.sizes == [8, 8] and model.level_sizes == [3, 8, 8]
    x = torch.from_numpy(items)
    codes = model.encode_items(x, mods)
    z = model.embed(x)
    assert torch.equal(codes[:, 0], model.classifier(z).argmax(1))
    assert torch.equal(codes[:, 1:], model.quantizer.encode(z))
    assert modality_accuracy(codes, mods) >= 0.95
    batch = (torch.from_numpy(q[:16]), torch.from_numpy(items[rows[:16]]), modality_index(mods)[rows[:16]])
    out = model.losses(*batch)
    assert out["modality_ce"] > 0 and torch.allclose(out["loss"], out["cl"] + 100 * out["rq"] + 100 * out["mse"]
                                                      + out["modality_ce"])


def test_no_modality_code_keeps_the_semantic_levels_only():
    q, rows, items, mods = toy()
    model = fit_modality_decoupled(q, rows, items, mods, seed=0, max_epochs=1, batch_size=32, modality_code="none",
                                   **SMALL)
    assert model.quantizer.sizes == [8, 8] and model.level_sizes == [8, 8]
    codes = model.encode_items(torch.from_numpy(items), mods)
    assert codes.shape == (len(items), 2)
    m = model.metrics(torch.from_numpy(items), mods, codes)
    assert m["modality_agreement"] is None and len(m["usage"]) == 2
    with pytest.raises(GenretrError, match="modality_code"):
        ModalityDecoupledQuantizer(D, modality_code="decoupled")
    with pytest.raises(GenretrError, match="first_level_size"):
        ModalityDecoupledQuantizer(D, first_level_size=4)


def test_modality_agreement_matches_codes_to_modalities_one_to_one():
    mods = ["image", "image", "text", "text", MODALITIES[2]]
    codes = np.array([[2, 0], [2, 1], [0, 0], [0, 0], [1, 5]])
    assert modality_accuracy(codes, mods) == pytest.approx(0.0)
    assert modality_agreement(codes, mods) == pytest.approx(1.0)
    merged = np.array([[0], [0], [0], [0], [1]])  # one code for images and texts: only one of them can match
    assert modality_agreement(merged, mods) == pytest.approx(3 / 5)


@pytest.mark.parametrize("off", ["cl", "rq", "mse"])
def test_each_loss_term_switches_off(off):
    torch.manual_seed(0)
    q, rows, items, mods = toy()
    r = torch.from_numpy(rows[:16])
    batch = (torch.from_numpy(q[:16]), torch.from_numpy(items[rows[:16]]), modality_index(mods)[rows[:16]],
             r[:, None] == r[None, :])
    full = ModalityDecoupledQuantizer(D, beta=3.0, gamma=5.0, **SMALL).eval()
    part = ModalityDecoupledQuantizer(D, beta=3.0, gamma=5.0, **{f"use_{off}": False}, **SMALL).eval()
    part.load_state_dict(full.state_dict())
    a, b = full.losses(*batch), part.losses(*batch)
    assert torch.allclose(a["loss"], a["cl"] + 3.0 * a["rq"] + 5.0 * a["mse"])
    weight = {"cl": 1.0, "rq": 3.0, "mse": 5.0}[off]
    assert torch.allclose(b["loss"], a["loss"] - weight * a[off])
    assert a[off] > 0


def test_mse_term_alone_trains_the_fusion_through_straight_through():
    torch.manual_seed(0)
    q, rows, items, mods = toy()
    m = ModalityDecoupledQuantizer(D, use_cl=False, use_rq=False, **SMALL).train()
    out = m.losses(torch.from_numpy(q[:16]), torch.from_numpy(items[rows[:16]]), modality_index(mods)[rows[:16]])
    out["loss"].backward()
    assert m.fusion.mix[-1].weight.grad.abs().sum() > 0
    with pytest.raises(GenretrError, match="at least one"):
        ModalityDecoupledQuantizer(D, use_cl=False, use_rq=False, use_mse=False)


def test_info_nce_masks_the_targets_relevant_to_each_query():
    torch.manual_seed(0)
    zq, zc = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    logits = zq @ zc.t() / 0.1
    relevant = torch.eye(4, dtype=torch.bool)
    relevant[0, 1] = relevant[1, 0] = True  # the same item twice
    relevant[2, 3] = True  # query 2 also has pair 3's target among its relevant items (not query 3's own)
    expect = torch.stack([  # each query's own column is its positive; its other relevant columns are dropped
        F.cross_entropy(logits[0, [0, 2, 3]][None], torch.tensor([0])),
        F.cross_entropy(logits[1, [1, 2, 3]][None], torch.tensor([0])),
        F.cross_entropy(logits[2, [0, 1, 2]][None], torch.tensor([2])),
        F.cross_entropy(logits[3][None], torch.tensor([3]))]).mean()
    assert torch.allclose(info_nce(zq, zc, 0.1, relevant), expect)
    assert torch.allclose(info_nce(zq, zc, 0.1), F.cross_entropy(logits, torch.arange(4)))
    assert relevant[0, 0]  # the caller's mask is left as it was


def test_pair_batches_mark_every_item_relevant_to_a_query():
    """Relevance comes from all pairs, not only the batch's: query 0 has items 0 and 1, so a batch holding its pair
    with item 0 and another query's pair with item 1 masks item 1 for query 0."""
    from genretr.quantizers.modality_decoupled import PairBatches

    items = torch.randn(3, D)
    rows, groups = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 1])  # (query 0: items 0, 1), (query 1: 1, 2)
    batch = PairBatches(torch.randn(4, D), items, torch.zeros(3, dtype=torch.long), rows, groups)[[0, 2, 3]]
    assert batch[3].tolist() == [[True, True, False], [False, True, True], [False, True, True]]


def test_pair_batches_relevance_is_every_pair_of_the_batch_queries():
    """Against a set of every (query, item) pair: queries with many items each, their keys in the middle of the
    sorted keys, batches with repeated pairs."""
    from genretr.quantizers.modality_decoupled import PairBatches

    g = torch.Generator().manual_seed(0)
    n_items, n_pairs = 50, 600
    rows, groups = torch.randint(0, n_items, (n_pairs,), generator=g), torch.randint(0, 40, (n_pairs,), generator=g)
    every = set(zip(groups.tolist(), rows.tolist()))
    data = PairBatches(torch.randn(n_pairs, D), torch.randn(n_items, D), torch.zeros(n_items, dtype=torch.long),
                       rows, groups)
    for _ in range(20):
        pairs = torch.randint(0, n_pairs, (33,), generator=g).tolist()
        want = [[(int(groups[i]), int(rows[j])) in every for j in pairs] for i in pairs]
        assert data[pairs][3].tolist() == want


def test_shared_codebooks_and_paper_defaults():
    m = ModalityDecoupledQuantizer(D, shared=True, **SMALL)
    assert m.quantizer.level_book == [0, 1, 1]
    d = ModalityDecoupledQuantizer(D)
    hp = d.hparams
    assert (hp.tau, hp.beta, hp.gamma, hp.first_level_size) == (0.01, 100.0, 100.0, 3)
    assert d.quantizer.update == "ema" and d.quantizer.fixed_levels == () and hp.modality_code == "learned"
    assert d.quantizer.sizes == [3, 64, 64, 64]


def test_fit_is_deterministic_given_seed():
    q, rows, items, mods = toy()
    kw = dict(max_epochs=2, batch_size=32, **SMALL)
    a = fit_modality_decoupled(q, rows, items, mods, seed=1, **kw)
    b = fit_modality_decoupled(q, rows, items, mods, seed=1, **kw)
    c = fit_modality_decoupled(q, rows, items, mods, seed=2, **kw)
    x = torch.from_numpy(items)
    assert torch.equal(a.encode_items(x, mods), b.encode_items(x, mods))
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.fusion.gate[0].weight, c.fusion.gate[0].weight)
    metrics = a.metrics(x, mods)
    assert metrics["modality_agreement"] == modality_agreement(a.encode_items(x, mods), mods)
    assert 0 <= metrics["rel_error"] < 1
    with pytest.raises(GenretrError, match="pairs"):
        fit_modality_decoupled(q[:0], rows[:0], items, mods, seed=1, **kw)


def test_pair_batches_are_the_shuffled_pairs_without_copying_the_targets():
    """The loader gathers target rows per batch, in exactly the order DataLoader(shuffle=True) over the pairs gives."""
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

    from genretr.quantizers.modality_decoupled import PairBatches

    q, rows, items, names = toy()
    q, rows, items, mods = torch.as_tensor(q), torch.as_tensor(rows), torch.as_tensor(items), modality_index(names)
    groups = torch.arange(len(rows))  # every pair its own query
    old = DataLoader(TensorDataset(q, items[rows], mods[rows], rows, groups), batch_size=32, shuffle=True,
                     generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    new = DataLoader(PairBatches(q, items, mods, rows, groups), batch_size=None, generator=g,
                     sampler=BatchSampler(RandomSampler(range(len(rows)), generator=g), 32, drop_last=False))
    for _ in range(2):  # two epochs: the shared generator advances alike
        got, want = list(new), list(old)
        assert len(got) == len(want)
        for x, y in zip(got, want):
            assert all(torch.equal(a, b) for a, b in zip(x[:3], y[:3]))
            r = y[3]  # one item a query: relevant = the same item
            assert torch.equal(x[3], r[:, None] == r[None, :])


def test_metrics_summed_in_blocks_equal_one_block():
    q, rows, items, mods = toy()
    model = fit_modality_decoupled(q, rows, items, mods, seed=0, max_epochs=1, batch_size=32, **SMALL)
    x = torch.from_numpy(items)
    one, blocks = model.metrics(x, mods, batch_size=len(x)), model.metrics(x, mods, batch_size=7)
    assert blocks["usage"] == one["usage"] and blocks["modality_agreement"] == one["modality_agreement"]
    assert blocks["rel_error"] == pytest.approx(one["rel_error"], rel=1e-6) and one["rel_error"] > 0


def test_the_fusion_gate_learns_from_image_and_text_parts_and_not_from_one_vector():
    """Sec. 4.2.1's h(image, text): the gate λ gets a gradient from unfused parts (n, 2, d); fed one fused vector
    twice, h(v, v) = v + MLP([v; v]) and λ cancels (its gradient is 0)."""
    torch.manual_seed(0)
    q, rows, items, mods = toy()
    g = np.random.default_rng(3)
    parts = lambda x: torch.from_numpy(np.stack([x, (x + g.normal(size=x.shape)).astype(np.float32)], 1))
    for inputs, alive in (((parts(q[:16]), parts(items[rows[:16]])), True),
                          ((torch.from_numpy(q[:16]), torch.from_numpy(items[rows[:16]])), False)):
        m = ModalityDecoupledQuantizer(D, **SMALL).train()
        with torch.no_grad():
            m.fusion.mix[-1].weight.normal_(std=0.1)  # past the first step: the MLP's output is no longer zero
        m.losses(*inputs, modality_index(mods)[rows[:16]])["loss"].backward()
        grad = m.fusion.gate[-1].weight.grad.abs().sum()
        assert (grad > 1e-6) if alive else (grad < 1e-6)
    z = ModalityDecoupledQuantizer(D, **SMALL).embed(parts(items[:4]))
    assert z.shape == (4, D) and torch.allclose(z.norm(dim=1), torch.ones(4))
