"""genretr.quantizers.modality_decoupled: GENIUS's quantizer (Sec. 4.2, Eq. 3-8)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genretr.errors import GenretrError
from genretr.quantizers.modality_decoupled import (MODALITIES, Fusion, ModalityDecoupledQuantizer,
                                                   fit_modality_decoupled, info_nce, modality_accuracy,
                                                   modality_index)

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


def test_fusion_starts_as_identity_and_mixes_with_a_gate():
    torch.manual_seed(0)
    f = Fusion(D, 32)
    x, y = torch.randn(5, D), torch.randn(5, D)
    assert torch.allclose(f(x, x), x, atol=1e-6)  # MLP output layer starts at zero: h(v, v) = v
    lam = torch.sigmoid(f.gate(torch.cat([x, y], -1)))
    assert lam.shape == (5, 1) and ((lam > 0) & (lam < 1)).all()
    assert torch.allclose(f(x, y), lam * x + (1 - lam) * y + f.mix(torch.cat([x, y], -1)))


def test_first_code_is_the_modality_by_construction():
    torch.manual_seed(0)
    q, rows, items, mods = toy()
    untrained = ModalityDecoupledQuantizer(D, **SMALL)
    codes = untrained.encode_items(torch.from_numpy(items), mods)
    assert codes.shape == (len(items), 3)
    assert modality_accuracy(codes, mods) == 1.0
    assert torch.equal(codes[:, 0], modality_index(mods))
    model = fit_modality_decoupled(q, rows, items, mods, seed=0, max_epochs=2, batch_size=32, **SMALL)
    assert modality_accuracy(model.encode_items(torch.from_numpy(items), mods), mods) == 1.0
    # the modality codewords are learned as each modality's mean fused target vector (EMA)
    assert getattr(model.quantizer, "ready_0").all()
    with pytest.raises(GenretrError, match="modality"):
        modality_index(["image", "audio"])


def test_ablation_first_level_is_learned_not_given():
    torch.manual_seed(0)
    m = ModalityDecoupledQuantizer(D, modality_decoupled=False, **SMALL)
    assert m.quantizer.fixed_levels == () and m.quantizer.sizes[0] == 3
    q, rows, items, mods = toy()
    model = fit_modality_decoupled(q, rows, items, mods, seed=0, max_epochs=2, batch_size=32,
                                   modality_decoupled=False, **SMALL)
    codes = model.encode_items(torch.from_numpy(items), mods)
    z = model.embed(torch.from_numpy(items))
    assert torch.equal(codes[:, 0], ((z[:, None] - model.quantizer.codebooks[0][None]) ** 2).sum(-1).argmin(1))
    assert modality_accuracy(codes, mods) < 1.0  # modality is random w.r.t. the toy's vectors


@pytest.mark.parametrize("off", ["cl", "rq", "mse"])
def test_each_loss_term_switches_off(off):
    torch.manual_seed(0)
    q, rows, items, mods = toy()
    batch = (torch.from_numpy(q[:16]), torch.from_numpy(items[rows[:16]]), modality_index(mods)[rows[:16]],
             torch.from_numpy(rows[:16]))
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


def test_info_nce_masks_duplicate_targets():
    torch.manual_seed(0)
    zq, zc = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    items = torch.tensor([7, 7, 3, 5])
    logits = zq @ zc.t() / 0.1
    expect = torch.stack([  # each query's own column is its positive; the other copy of item 7 is dropped
        F.cross_entropy(logits[0, [0, 2, 3]][None], torch.tensor([0])),
        F.cross_entropy(logits[1, [1, 2, 3]][None], torch.tensor([0])),
        F.cross_entropy(logits[2][None], torch.tensor([2])),
        F.cross_entropy(logits[3][None], torch.tensor([3]))]).mean()
    assert torch.allclose(info_nce(zq, zc, items, 0.1), expect)
    assert torch.allclose(info_nce(zq, zc, None, 0.1), F.cross_entropy(logits, torch.arange(4)))


def test_shared_codebooks_and_paper_defaults():
    m = ModalityDecoupledQuantizer(D, shared=True, **SMALL)
    assert m.quantizer.level_book == [0, 1, 1]
    d = ModalityDecoupledQuantizer(D)
    hp = d.hparams
    assert (hp.tau, hp.beta, hp.gamma, hp.first_level_size) == (0.01, 100.0, 100.0, 3)
    assert d.quantizer.update == "ema" and d.quantizer.fixed_levels == (0,)
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
    assert metrics["modality_accuracy"] == 1.0 and 0 <= metrics["rel_error"] < 1
    with pytest.raises(GenretrError, match="pairs"):
        fit_modality_decoupled(q[:0], rows[:0], items, mods, seed=1, **kw)


def test_pair_batches_are_the_shuffled_pairs_without_copying_the_targets():
    """The loader gathers target rows per batch, in exactly the order DataLoader(shuffle=True) over the pairs gives."""
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

    from genretr.quantizers.modality_decoupled import PairBatches

    q, rows, items, names = toy()
    q, rows, items, mods = torch.as_tensor(q), torch.as_tensor(rows), torch.as_tensor(items), modality_index(names)
    old = DataLoader(TensorDataset(q, items[rows], mods[rows], rows), batch_size=32, shuffle=True,
                     generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    new = DataLoader(PairBatches(q, items, mods, rows), batch_size=None, generator=g,
                     sampler=BatchSampler(RandomSampler(range(len(rows)), generator=g), 32, drop_last=False))
    for _ in range(2):  # two epochs: the shared generator advances alike
        got, want = list(new), list(old)
        assert len(got) == len(want) and all(torch.equal(a, b) for x, y in zip(got, want) for a, b in zip(x, y))


def test_metrics_summed_in_blocks_equal_one_block():
    q, rows, items, mods = toy()
    model = fit_modality_decoupled(q, rows, items, mods, seed=0, max_epochs=1, batch_size=32, **SMALL)
    x = torch.from_numpy(items)
    one, blocks = model.metrics(x, mods, batch_size=len(x)), model.metrics(x, mods, batch_size=7)
    assert blocks["usage"] == one["usage"] and blocks["modality_accuracy"] == one["modality_accuracy"]
    assert blocks["rel_error"] == pytest.approx(one["rel_error"], rel=1e-6) and one["rel_error"] > 0
