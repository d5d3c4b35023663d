"""genretr.decoding.hf.constrained_search with genretr.backbones.t5_prefix.T5PrefixDecoder.

The key property is exactness: with at least as many beams as identifiers, trie-constrained beam
search is exhaustive, so it must rank every item by the exact summed log-probability of its
identifier (computed here by brute-force teacher forcing).
"""
import random

import pytest
import torch

from genretr.backbones.t5_prefix import T5PrefixDecoder
from genretr.decoding.hf import constrained_search, prefix_allowed_fn
from genretr.decoding.trie import Trie
from genretr.identifiers.base import EOS, PAD, IdTable

V = 12
N_IDS = 15
VOCAB = ["<pad>", "</s>"] + [f"t{i}" for i in range(2, V)]

def tiny_decoder(seed=0):
    torch.manual_seed(seed)
    return T5PrefixDecoder(vocab_size=V, input_dim=8, d_model=32, num_layers=1, num_heads=2, d_ff=64, dropout=0.0,
                           prefix_len=2, prefix_hidden=32)


def variable_table():
    rng = random.Random(0)
    seqs = set()
    for length in (1, 1, 2, 2, 3, 3, 4, 4):  # at least two of every length
        while True:
            s = tuple(rng.randint(2, V - 1) for _ in range(length))
            if s not in seqs:
                seqs.add(s)
                break
    while len(seqs) < N_IDS:
        seqs.add(tuple(rng.randint(2, V - 1) for _ in range(rng.randint(1, 4))))
    seqs = sorted(seqs)
    rng.shuffle(seqs)
    return IdTable.from_lists([f"v{k}" for k in range(N_IDS)], [list(s) for s in seqs], VOCAB)


def fixed_table():
    rng = random.Random(1)
    seqs = set()
    while len(seqs) < N_IDS:
        seqs.add(tuple(rng.randint(2, V - 1) for _ in range(3)))
    return IdTable.from_lists([f"f{k}" for k in range(N_IDS)], [list(s) for s in sorted(seqs)], VOCAB)


@pytest.fixture(scope="module")
def model():
    return tiny_decoder().eval()


@pytest.fixture(scope="module")
def queries():
    return torch.randn(5, 8, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def exact_scores(model, z, table) -> torch.Tensor:
    """(n_queries, n_items) summed log-probabilities of every identifier, EOS included."""
    model.eval()
    enc = model.encoder_outputs(z)
    out = torch.empty(len(z), len(table))
    for j, iid in enumerate(table.item_ids):
        toks = torch.tensor(table.tokens(iid))
        dec_in = torch.cat([torch.tensor([PAD]), toks[:-1]]).expand(len(z), -1)
        logits = model.t5(encoder_outputs=enc, decoder_input_ids=dec_in).logits
        lp = logits.log_softmax(-1).gather(-1, toks.expand(len(z), -1)[..., None])[..., 0]
        out[:, j] = lp.sum(-1)
    return out


def exact_order(scores, table):
    return [[table.item_ids[j] for j in torch.argsort(row, descending=True).tolist()] for row in scores]


def cut_at_eos(seq) -> tuple:
    seq = [int(t) for t in seq]
    return tuple(seq[: seq.index(EOS) + 1]) if EOS in seq else tuple(seq)


def test_tables_are_as_intended():
    v, f = variable_table(), fixed_table()
    assert len(v) == len(f) == N_IDS and v.collisions() == f.collisions() == 0
    assert {len(v.tokens(i)) for i in v.item_ids} == {2, 3, 4, 5}
    assert {len(f.tokens(i)) for i in f.item_ids} == {4}


def test_prefix_allowed_fn_drops_the_start_token_and_pads_finished_beams():
    t = fixed_table()
    trie, fn = Trie(t), prefix_allowed_fn(Trie(t))
    assert fn(0, torch.tensor([PAD])) == trie.allowed([])
    first = t.tokens("f0")
    assert fn(0, torch.tensor([PAD, first[0]])) == trie.allowed(first[:1])
    assert fn(0, torch.tensor([PAD, *first])) == [PAD]  # finished: only padding


def test_forward_loss_is_mean_token_cross_entropy(model, queries):
    t = variable_table()
    labels = torch.tensor(t.sequences[:5], dtype=torch.long)
    with torch.no_grad():
        loss = model(queries, labels)
    ex = exact_scores(model, queries, t.subset(t.item_ids[:5]))
    n_tokens = sum(len(t.tokens(i)) for i in t.item_ids[:5])
    expected = -sum(ex[q, q] for q in range(5)) / n_tokens
    assert torch.allclose(loss, expected, atol=1e-4)


@pytest.mark.parametrize("make_table", [variable_table, fixed_table], ids=["variable", "fixed"])
def test_generate_scores_are_summed_logprobs_and_exhaustive(model, queries, make_table):
    """model.generate with length_penalty=0 and beams >= identifiers finds every identifier, each scored by
    its exact summed log-probability (within 1e-4)."""
    table = make_table()
    trie = Trie(table)
    ex = exact_scores(model, queries, table)
    seqs, scores = model.generate(queries, num_beams=N_IDS, max_new_tokens=trie.max_len,
                                  prefix_allowed_tokens_fn=prefix_allowed_fn(trie), length_penalty=0.0)
    seqs, scores = seqs.view(len(queries), N_IDS, -1), scores.view(len(queries), N_IDS)
    index = {table.tokens(i): j for j, i in enumerate(table.item_ids)}
    for q in range(len(queries)):
        found = [cut_at_eos(s) for s in seqs[q].tolist()]
        assert set(found) == set(index), "beam search with beams >= identifiers must be exhaustive"
        for s, sc in zip(found, scores[q].tolist()):
            assert abs(sc - ex[q, index[s]].item()) < 1e-4


def test_exhaustive_search_ranks_by_exact_score_fixed_length(model, queries):
    table = fixed_table()
    ex = exact_scores(model, queries, table)
    rankings, qps = constrained_search(model, queries, Trie(table), table, num_beams=N_IDS, top_k=N_IDS,
                                       progress=False)
    assert qps > 0
    assert rankings == exact_order(ex, table)


def test_exhaustive_search_ranks_by_exact_score_variable_length(model, queries):
    table = variable_table()
    ex = exact_scores(model, queries, table)
    rankings, _ = constrained_search(model, queries, Trie(table), table, num_beams=N_IDS, top_k=N_IDS,
                                     progress=False)
    assert rankings == exact_order(ex, table)


def test_more_beams_than_identifiers_and_top_k(model, queries):
    table = fixed_table()
    order = exact_order(exact_scores(model, queries, table), table)
    rankings, _ = constrained_search(model, queries, Trie(table), table, num_beams=40, top_k=4, progress=False)
    assert rankings == [o[:4] for o in order]


def test_batching_does_not_change_results(model, queries):
    table = fixed_table()
    a, _ = constrained_search(model, queries, Trie(table), table, num_beams=4, top_k=4, progress=False)
    b, _ = constrained_search(model, queries, Trie(table), table, num_beams=4, top_k=4, batch_size=2,
                              progress=False)
    assert a == b


def _check_small_beams(model, queries, table, beams):
    ex = exact_scores(model, queries, table)
    col = {iid: j for j, iid in enumerate(table.item_ids)}
    order = exact_order(ex, table)
    rankings, _ = constrained_search(model, queries, Trie(table), table, num_beams=beams, top_k=N_IDS,
                                     progress=False)
    assert len(rankings) == len(queries)
    for q, ranked in enumerate(rankings):
        assert len(ranked) == beams and len(set(ranked)) == beams
        assert set(ranked) <= set(table.item_ids)
        assert ranked[0] in order[q]
        s = [ex[q, col[i]].item() for i in ranked]
        assert s == sorted(s, reverse=True)  # ranked by exact score


@pytest.mark.parametrize("beams", [2, 4, 7])
def test_smaller_beams_fixed_length(model, queries, beams):
    _check_small_beams(model, queries, fixed_table(), beams)


def test_smaller_beams_variable_length(model, queries):
    _check_small_beams(model, queries, variable_table(), 4)


@torch.no_grad()
def constrained_greedy(model, z, trie):
    """Step-by-step argmax over the trie's allowed tokens, by teacher forcing."""
    enc = model.encoder_outputs(z[None])
    prefix = []
    while True:
        dec = torch.tensor([[PAD, *prefix]])
        logits = model.t5(encoder_outputs=enc, decoder_input_ids=dec).logits[0, -1]
        allowed = trie.allowed(prefix)
        tok = max(allowed, key=lambda t: logits[t].item())
        prefix.append(tok)
        if tok == EOS:
            return tuple(prefix)


def test_greedy_search_is_constrained_greedy(model, queries):
    table = fixed_table()
    trie = Trie(table)
    rankings, _ = constrained_search(model, queries, trie, table, num_beams=1, top_k=5, progress=False)
    for q, ranked in enumerate(rankings):
        assert ranked == table.items_of(constrained_greedy(model, queries[q], trie))


# ------------------------------------------------------------------ training sanity


@pytest.fixture(scope="module")
def trained():
    """Overfit 8 (vector -> identifier) pairs with plain Adam."""
    table = fixed_table().subset([f"f{k}" for k in range(0, 15, 2)][:8])
    z = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor(table.sequences, dtype=torch.long)
    model = tiny_decoder(seed=2)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    first = None
    for _ in range(100):
        loss = model(z, labels)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), table, z, first, loss.item()


def test_training_reduces_loss(trained):
    _, _, _, first, last = trained
    assert last < 0.5 and last < first / 10


def test_trained_decoder_retrieves_its_items_with_beam_search(trained):
    model, table, z, _, _ = trained
    rankings, _ = constrained_search(model, z, Trie(table), table, num_beams=3, top_k=1, progress=False)
    assert [r[0] for r in rankings] == table.item_ids


def test_trained_decoder_retrieves_its_items_greedily(trained):
    model, table, z, _, _ = trained
    rankings, _ = constrained_search(model, z, Trie(table), table, num_beams=1, top_k=1, progress=False)
    assert [r[0] for r in rankings] == table.item_ids
