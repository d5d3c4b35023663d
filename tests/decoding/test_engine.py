"""genretr.decoding.engine: exactness against HF `generate` + a Python trie, on random decoders and tries.

The engine's contract is exact beam search with HF's rules (2 x beams candidates per step, ending candidates
finalised when they rank within the first `beams`, HF's early-stopping modes) over real beams only; it is
checked against an exhaustive reference in test_engine_reference.py.  HF differs through its placeholder
("ghost") beams: it starts each query with beams - 1 placeholders at -1e9 and lets them (and finished beams
penalised by -1e9) run when a step has too few valid candidates; they can enter HF's finished list with
scores near -1e9 and, with early stopping, fill it and stop the query before real identifiers finish -- the
engine then searches on and may return better identifiers.  So here: where HF returns no placeholder entry,
the engine must return the same identifiers in the same order with scores within 1e-4; where it does, every
real HF entry must be among the engine's with the same score (true in these settings; not a contract: see
test_engine_reference.py::test_placeholder_beams_stop_hf_early_and_the_engine_searches_on).
"""
import random

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList, PrefixConstrainedLogitsProcessor

from genretr.backbones.t5_prefix import T5PrefixDecoder
from genretr.decoding.csr_trie import CSRTrie
from genretr.decoding.engine import (TrieLogitsProcessor, beam_search, constrained_beam_search, hf_generate,
                                     rank_items)
from genretr.decoding.hf import constrained_search, prefix_allowed_fn
from genretr.decoding.rerank import rerank
from genretr.backbones.t5_step import T5StepDecoder
from genretr.decoding.trie import Trie
from genretr.identifiers.base import EOS, PAD, IdTable

GHOST = -1e8  # HF placeholder beams score about -1e9


def decoder(seed, V, d=32, layers=2, heads=2, prefix_len=3, **kw):
    torch.manual_seed(seed)
    return T5PrefixDecoder(vocab_size=V, input_dim=8, d_model=d, num_layers=layers, num_heads=heads, d_ff=2 * d,
                           dropout=0.0, prefix_len=prefix_len, prefix_hidden=32, **kw).eval()


# name: (vocab, alphabet size, lengths, distinct identifiers, duplicated items)
TRIES = {
    "fixed-wide": (14, 12, (3, 3), 20, 0),
    "variable-shared": (12, 3, (1, 5), 22, 0),
    "variable-wide": (16, 14, (1, 4), 30, 0),
    "duplicates": (12, 4, (2, 3), 14, 10),
    "chains": (10, 2, (6, 8), 6, 2),
}


def random_table(name, seed=0):
    V, alpha, (lo, hi), n, dups = TRIES[name]
    rng = random.Random(seed)
    seqs = set()
    while len(seqs) < n:
        seqs.add(tuple(rng.randint(2, 1 + alpha) for _ in range(rng.randint(lo, hi))))
    seqs = sorted(seqs)
    rng.shuffle(seqs)
    seqs += [rng.choice(seqs) for _ in range(dups)]
    return IdTable.from_lists([f"i{k}" for k in range(len(seqs))], [list(s) for s in seqs],
                              ["<pad>", "</s>"] + [f"t{k}" for k in range(2, V)])


def cut(seq) -> tuple:
    seq = [int(t) for t in seq]
    return tuple(seq[: seq.index(EOS) + 1]) if EOS in seq else tuple(seq)


@torch.no_grad()
def hf_beams(model, z, table, beams, length_penalty=0.0, early_stopping=True):
    """Per query: [(identifier, score)] from HF generate with prefix_allowed_tokens_fn over the dict Trie."""
    trie = Trie(table)
    fn = prefix_allowed_fn(trie)
    if beams == 1:  # HF greedy: no scores, so score the sequences by teacher forcing
        seqs, scores = model.generate(z, 1, trie.max_len, fn, length_penalty=length_penalty)
        return [[(cut(s), sc)] for s, sc in zip(seqs.tolist(), scores.tolist())]
    out = model.t5.generate(encoder_outputs=model.encoder_outputs(z), num_beams=beams, num_return_sequences=beams,
                            max_new_tokens=trie.max_len, prefix_allowed_tokens_fn=fn, length_penalty=length_penalty,
                            early_stopping=early_stopping, do_sample=False, output_scores=True,
                            return_dict_in_generate=True)
    seqs = out.sequences[:, 1:].view(len(z), beams, -1).tolist()
    scores = out.sequences_scores.view(len(z), beams).tolist()
    return [[(cut(s), sc) for s, sc in zip(seqs[q], scores[q])] for q in range(len(z))]


def engine_beams(model, z, table, beams, length_penalty=0.0, early_stopping=True, batch_size=64):
    r = beam_search(model, z, CSRTrie.from_table(table), beams, length_penalty, early_stopping=early_stopping,
                    batch_size=batch_size)
    return [[(tuple(r.tokens[q, b, : r.lengths[q, b]].tolist()), r.scores[q, b].item())
             for b in range(r.scores.shape[1]) if r.scores[q, b] > float("-inf")] for q in range(len(z))]


def compare(eng, hf) -> bool:
    """Assert the engine agrees with HF on one query; True when HF's list has no placeholder entry."""
    real = [(s, sc) for s, sc in hf if sc > GHOST]
    mine = dict(eng)
    assert len(mine) == len(eng), "the engine returned an identifier twice"
    for s, sc in real:
        assert s in mine, f"HF found {s} ({sc:.4f}); the engine did not: {eng}"
        assert abs(mine[s] - sc) < 1e-4, (s, mine[s], sc)
    if len(real) < len(hf):
        return False
    assert len(eng) == len(hf)
    for i, ((a, sa), (b, sb)) in enumerate(zip(eng, hf)):
        assert abs(sa - sb) < 1e-4
        if a != b:  # only a numerical near-tie may swap two identifiers
            assert abs(mine[a] - mine[b]) < 1e-5, (i, eng, hf)
    return True


@pytest.mark.parametrize("name", list(TRIES))
def test_beam_search_matches_hf(name):
    table = random_table(name)
    n_seq = CSRTrie.from_table(table).num_sequences
    exact = total = 0
    for seed, (layers, heads, plen) in enumerate([(1, 2, 1), (2, 4, 3), (3, 2, 4)]):
        V = table.vocab_size
        model = decoder(seed, V, layers=layers, heads=heads, prefix_len=plen)
        z = torch.randn(4, 8, generator=torch.Generator().manual_seed(seed))
        for beams in sorted({1, 2, 3, 5, 8, n_seq}):
            b = min(beams, n_seq)
            for q, (e, h) in enumerate(zip(engine_beams(model, z, table, b), hf_beams(model, z, table, b))):
                exact += compare(e, h)
                total += 1
    assert exact >= total * 0.6, f"only {exact}/{total} comparisons free of HF placeholder beams"


@pytest.mark.parametrize("name", ["variable-shared", "fixed-wide"])
@pytest.mark.parametrize("length_penalty", [1.0, -0.5])
def test_length_penalty_matches_hf(name, length_penalty):
    table = random_table(name, seed=1)
    model = decoder(5, table.vocab_size, layers=2)
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(3))
    for beams in (2, 4):
        for e, h in zip(engine_beams(model, z, table, beams, length_penalty),
                        hf_beams(model, z, table, beams, length_penalty)):
            compare(e, h)


@pytest.mark.parametrize("name", ["variable-shared", "variable-wide"])
def test_no_early_stopping_matches_hf(name):
    table = random_table(name, seed=2)
    model = decoder(7, table.vocab_size)
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(4))
    for beams in (2, 3, 5):
        for e, h in zip(engine_beams(model, z, table, beams, early_stopping=False),
                        hf_beams(model, z, table, beams, early_stopping=False)):
            compare(e, h)


@torch.no_grad()
def exact_scores(model, z, seqs) -> torch.Tensor:
    """(n_queries, n_seqs) summed log-probabilities by teacher forcing (EOS included)."""
    enc = model.encoder_outputs(z)
    out = torch.empty(len(z), len(seqs))
    for j, s in enumerate(seqs):
        toks = torch.tensor(s)
        dec_in = torch.cat([torch.tensor([PAD]), toks[:-1]]).expand(len(z), -1)
        lp = model.t5(encoder_outputs=enc, decoder_input_ids=dec_in).logits.log_softmax(-1)
        out[:, j] = lp.gather(-1, toks.expand(len(z), -1)[..., None])[..., 0].sum(-1)
    return out


@pytest.mark.parametrize("name", list(TRIES))
def test_exhaustive_when_beams_cover_the_trie(name):
    """With as many beams as identifiers every identifier is found with its exact score, in score order."""
    table = random_table(name)
    trie = CSRTrie.from_table(table)
    seqs = sorted({table.tokens(i) for i in table.item_ids})
    model = decoder(11, table.vocab_size)
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(5))
    ex = exact_scores(model, z, seqs)
    for beams in (len(seqs), len(seqs) + 7):
        for q, found in enumerate(engine_beams(model, z, table, beams)):
            assert sorted(s for s, _ in found) == seqs
            for s, sc in found:
                assert abs(sc - ex[q, seqs.index(s)].item()) < 1e-4
            assert [sc for _, sc in found] == sorted((sc for _, sc in found), reverse=True)
    assert trie.num_sequences == len(seqs)


def test_greedy_is_constrained_argmax():
    table = random_table("variable-shared")
    trie = Trie(table)
    model = decoder(3, table.vocab_size)
    z = torch.randn(5, 8, generator=torch.Generator().manual_seed(6))
    for q, [(seq, _)] in enumerate(engine_beams(model, z, table, 1)):
        prefix = []
        while not prefix or prefix[-1] != EOS:
            logits = model.t5(encoder_outputs=model.encoder_outputs(z[q:q + 1]),
                              decoder_input_ids=torch.tensor([[PAD, *prefix]])).logits[0, -1]
            prefix.append(max(trie.allowed(prefix), key=lambda t: logits[t].item()))
        assert seq == tuple(prefix)


def test_unconstrained_matches_hf():
    model = decoder(9, 12, layers=2)
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(7))
    for beams in (1, 3, 6):
        r = beam_search(model, z, None, beams, max_len=4)
        seqs, scores = hf_generate(model, z, beams, 4, trie=None)
        if beams == 1:
            scores = model.sequence_logprob(z, seqs)
        seqs, scores = seqs.view(3, beams, -1).tolist(), scores.view(3, beams).tolist()
        for q in range(3):
            eng = [(tuple(r.tokens[q, b, : r.lengths[q, b]].tolist()), r.scores[q, b].item()) for b in range(beams)]
            compare(eng, [(cut(s), sc) for s, sc in zip(seqs[q], scores[q])])


def test_batching_does_not_change_results(monkeypatch):
    table = random_table("variable-wide")
    model = decoder(1, table.vocab_size)
    z = torch.randn(7, 8, generator=torch.Generator().manual_seed(8))
    a = engine_beams(model, z, table, 4, batch_size=64)
    made, real = [], T5StepDecoder.new_cache
    monkeypatch.setattr(T5StepDecoder, "new_cache", lambda self, rows, T: made.append(rows) or real(self, rows, T))
    b = engine_beams(model, z, table, 4, batch_size=3)  # batches of 3, 3, 1 queries
    assert made == [3 * 4]  # one cache for the whole search (fixed addresses for CUDA graphs), reused by each batch
    for x, y in zip(a, b):
        assert [s for s, _ in x] == [s for s, _ in y]
        assert np.allclose([sc for _, sc in x], [sc for _, sc in y], atol=1e-5)


# -------------------------------------------------------------------------- rankings and the HF path


def test_rankings_match_the_hf_path():
    """constrained_beam_search == decoding.hf.constrained_search (items, order) where HF has no placeholders."""
    table = random_table("fixed-wide")
    model = decoder(2, table.vocab_size)
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(9))
    trie = CSRTrie.from_table(table)
    for beams, top_k in ((4, 3), (6, 10), (20, 50)):
        ours, qps = constrained_beam_search(model, z, trie, table, beams, top_k)
        theirs, _ = constrained_search(model, z, Trie(table), table, beams, top_k=top_k, progress=False)
        assert qps > 0 and ours == theirs


def test_items_top_k_and_duplicates():
    table = random_table("duplicates")
    model = decoder(4, table.vocab_size)
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(10))
    trie = CSRTrie.from_table(table)
    n_seq = trie.num_sequences
    rankings, scores, _ = constrained_beam_search(model, z, trie, table, n_seq, top_k=1000, return_scores=True)
    for ranked, sc in zip(rankings, scores):
        assert sorted(ranked) == sorted(table.item_ids)  # k > identifiers: every item, each once
        assert sc == sorted(sc, reverse=True)
        by_seq = {}
        for iid, s in zip(ranked, sc):
            by_seq.setdefault(table.tokens(iid), set()).add(s)
        assert all(len(v) == 1 for v in by_seq.values())  # items sharing an identifier share its score
    # without a table the items come from the trie's leaves (rows of the table it was built from)
    res = beam_search(model, z, trie, n_seq)
    rows, _ = rank_items(res, None, trie, top_k=1000)
    assert [[table.item_ids[r] for r in rr] for rr in rows] == rankings
    few, _ = constrained_beam_search(model, z, trie, table, 3, top_k=2)
    assert all(len(r) == 2 for r in few)


def test_accepts_a_dict_trie():
    table = random_table("variable-shared")
    model = decoder(6, table.vocab_size)
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(11))
    a, _ = constrained_beam_search(model, z, Trie(table), table, 5, 5)
    b, _ = constrained_beam_search(model, z, CSRTrie.from_table(table), table, 5, 5)
    assert a == b


# -------------------------------------------------------------------------- TrieLogitsProcessor


@pytest.mark.parametrize("name", ["variable-shared", "duplicates", "fixed-wide"])
def test_trie_logits_processor_equals_prefix_allowed_fn(name):
    table = random_table(name)
    trie, csr = Trie(table), CSRTrie.from_table(table)
    rng = random.Random(0)
    rows = []
    ids = [table.tokens(i) for i in table.item_ids]
    for _ in range(60):
        s = list(rng.choice(ids))
        k = rng.randint(0, len(s))
        row = s[:k]
        if rng.random() < 0.2:
            row = row + [rng.randint(2, table.vocab_size - 1)]  # maybe invalid
        rows.append(row)
    width = max(len(r) for r in rows) + 1
    input_ids = torch.tensor([[PAD] + r + [PAD] * (width - 1 - len(r)) for r in rows])
    # rows of a batch share a length in HF: compare row by row at its own length
    for i, r in enumerate(rows):
        x = input_ids[i:i + 1, : len(r) + 1]
        scores = torch.randn(1, table.vocab_size)
        ref = PrefixConstrainedLogitsProcessor(prefix_allowed_fn(trie), 1)(x, scores.clone())
        ours = TrieLogitsProcessor(csr, 1)(x, scores.clone())
        assert torch.equal(ref, ours), (r, ref, ours)
    # and a whole batch at once (same length)
    same = [r for r in rows if len(r) == 2][:8]
    x = torch.tensor([[PAD] + r for r in same])
    scores = torch.randn(len(same), table.vocab_size)
    ref = PrefixConstrainedLogitsProcessor(prefix_allowed_fn(trie), 1)(x, scores.clone())
    assert torch.equal(ref, TrieLogitsProcessor(csr, 1)(x, scores.clone()))


def test_hf_generate_with_trie_logits_processor_equals_python_trie():
    table = random_table("variable-wide")
    model = decoder(8, table.vocab_size)
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(12))
    csr = CSRTrie.from_table(table)
    for beams in (1, 4):
        a = hf_generate(model, z, beams, csr.max_len, Trie(table), mode="python")
        b = hf_generate(model, z, beams, csr.max_len, csr, mode="processor")
        assert torch.equal(a[0], b[0])
        if beams > 1:
            assert torch.allclose(a[1], b[1])


def test_hf_generate_accepts_processor_in_a_list():
    table = random_table("fixed-wide")
    model = decoder(8, table.vocab_size)
    z = torch.randn(2, 8)
    proc = LogitsProcessorList([TrieLogitsProcessor(CSRTrie.from_table(table), 3)])
    out = model.t5.generate(encoder_outputs=model.encoder_outputs(z), num_beams=3, num_return_sequences=3,
                            max_new_tokens=4, logits_processor=proc, early_stopping=True)
    ids = {table.tokens(i) for i in table.item_ids}
    assert all(cut(s) in ids for s in out[:, 1:].tolist())


# -------------------------------------------------------------------------- rerank (GENIUS_R)


def test_rerank_orders_by_cosine():
    vecs = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0]), "c": torch.tensor([1.0, 1.0])}
    q = torch.tensor([[2.0, 0.1], [0.0, 3.0]])
    ranked = rerank([["b", "c", "a"], ["a", "c"]], q, lambda ids: torch.stack([vecs[i] for i in ids]))
    assert ranked == [["a", "c", "b"], ["c", "a"]]
    ranked, scores = rerank([["b", "a"], []], q, vecs, return_scores=True)
    assert ranked == [["a", "b"], []]
    assert scores[0][0] == pytest.approx(2.0 / np.hypot(2.0, 0.1))
    assert rerank([["b", "c", "a"]], q[:1], vecs, top_k=1) == [["a"]]


@pytest.mark.parametrize("name", ["variable-wide", "duplicates", "fixed-wide"])
def test_sparse_and_dense_constraint_paths_agree(name):
    """Gathering the allowed children (sparse) and masking full rows (dense) give the same search."""
    table = random_table(name)
    trie = CSRTrie.from_table(table)
    model = decoder(12, table.vocab_size)
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(13))
    for beams in (1, 3, 6):
        a = beam_search(model, z, trie, beams, dense_ratio=0.0)  # always sparse
        b = beam_search(model, z, trie, beams, dense_ratio=float("inf"))  # always dense
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.nodes, b.nodes)
        assert torch.allclose(a.scores, b.scores, atol=1e-5)
        assert (a.nodes[a.scores > float("-inf")] >= 0).all()


@pytest.mark.parametrize("scaled", [True, False])
def test_tied_and_untied_output_heads(scaled):
    """T5 scales the decoder output by d**-0.5 when the LM head is tied (scale_decoder_outputs): both match HF."""
    table = random_table("variable-wide", seed=3)
    model = decoder(14, table.vocab_size)
    model.t5.config.scale_decoder_outputs = scaled
    if not scaled:  # an untied head
        model.t5.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.t5.lm_head.weight) * 0.2)
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(15))
    for beams in (1, 4):
        for e, h in zip(engine_beams(model, z, table, beams), hf_beams(model, z, table, beams)):
            compare(e, h)
