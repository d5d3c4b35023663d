"""genretr.decoding.engine against an independent exhaustive reference (issue #18).

The contract: exact beam search with HF's rules (2 x beams candidates per step, an ending candidate is
finalised when it ranks among the first `beams`, the best `beams` non-ending ones run on, HF's early
stopping modes) over real beams only -- no placeholder beams.  The reference enumerates every prefix of
a small trie, scores it by teacher forcing the HF T5 (not the engine's step decoder), and runs those
rules in plain Python.  Also: empty result slots, `early_stopping="never"` against HF, and the case where
HF's placeholder beams stop a query early (10 identifiers, beam 7, length_penalty 0.7).
"""
import random

import pytest
import torch

from genretr.backbones.t5_prefix import T5PrefixDecoder
from genretr.decoding.csr_trie import CSRTrie
from genretr.decoding.engine import beam_search
from genretr.decoding.hf import prefix_allowed_fn
from genretr.decoding.trie import Trie
from genretr.identifiers.base import EOS, PAD, IdTable

GHOST = -1e8  # HF placeholder beams score about -1e9


def decoder(seed, V, d=32, layers=2, heads=2, prefix_len=3):
    torch.manual_seed(seed)
    return T5PrefixDecoder(vocab_size=V, input_dim=8, d_model=d, num_layers=layers, num_heads=heads, d_ff=2 * d,
                           dropout=0.0, prefix_len=prefix_len, prefix_hidden=32).eval()


def table_of(n, alpha, lengths, seed, V=None):
    """`n` distinct random identifiers over tokens 2..alpha+1 with lengths in `lengths` (EOS added by IdTable)."""
    rng = random.Random(seed)
    seqs = set()
    while len(seqs) < n:
        seqs.add(tuple(rng.randint(2, 1 + alpha) for _ in range(rng.randint(*lengths))))
    seqs = sorted(seqs)
    V = V or alpha + 2
    return IdTable.from_lists([f"i{k}" for k in range(n)], [list(s) for s in seqs],
                              ["<pad>", "</s>"] + [f"t{k}" for k in range(2, V)])


@torch.no_grad()
def prefix_logprobs(model, z, table):
    """Per query: {prefix: full-vocabulary log-softmax (list)} for every prefix of every identifier,
    by teacher forcing HF's T5 (independent of the engine's step decoder)."""
    enc = model.encoder_outputs(z)
    out = [dict() for _ in range(len(z))]
    for s in {table.tokens(i) for i in table.item_ids}:
        dec_in = torch.tensor([PAD, *s[:-1]]).expand(len(z), -1)
        lp = model.t5(encoder_outputs=enc, decoder_input_ids=dec_in).logits.log_softmax(-1).double()
        for q in range(len(z)):
            for k in range(len(s)):
                out[q].setdefault(tuple(s[:k]), lp[q, k].tolist())
    return out


def reference(logp, trie, beams, T, lp=0.0, early_stopping=True):
    """Beam search with HF's rules over real beams, in plain Python: [(identifier, score)], best first."""
    running, finished, frozen = [((), 0.0)], [], False
    for t in range(T):
        cands = sorted(((sc + logp[p][tok], p + (tok,)) for p, sc in running for tok in trie.allowed(p)),
                       key=lambda c: -c[0])[: 2 * beams]
        ends = [tok[-1] == EOS or t == T - 1 for _, tok in cands]
        if not frozen:
            finished += [(sc / (t + 1) ** lp, s) for r, ((sc, s), e) in enumerate(zip(cands, ends)) if e and r < beams]
            finished = sorted(finished, key=lambda c: -c[0])[:beams]
        running = [(s, sc) for (sc, s), e in zip(cands, ends) if not e][:beams]
        if not running:
            break
        if len(finished) == beams:
            if early_stopping is True:
                frozen = True
            else:
                length = T if early_stopping == "never" and lp > 0 else t + 1
                frozen = frozen or not running[0][1] / length ** lp > finished[-1][0]
        if frozen:
            break
    return [(s, sc) for sc, s in finished]


def engine_list(r, q):
    return [(tuple(r.tokens[q, b, : r.lengths[q, b]].tolist()), r.scores[q, b].item())
            for b in range(r.scores.shape[1]) if r.scores[q, b] > float("-inf")]


def same(eng, ref, tol=1e-4):
    """Same identifiers in the same order with the same scores (a numerical near-tie may swap two)."""
    assert len(eng) == len(ref), (eng, ref)
    mine = dict(eng)
    for (a, sa), (b, sb) in zip(eng, ref):
        assert abs(sa - sb) < tol, (eng, ref)
        if a != b:
            assert b in mine and abs(mine[b] - sa) < 1e-5, (eng, ref)


CASES = [  # (identifiers, alphabet, lengths, beams)
    (10, 3, (1, 4), 7),
    (10, 3, (1, 4), 3),
    (14, 4, (2, 3), 5),
    (22, 3, (1, 5), 8),
    (6, 2, (3, 6), 4),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("early_stopping", [True, False, "never"])
def test_engine_equals_the_exhaustive_reference(case, early_stopping):
    n, alpha, lengths, beams = case
    table = table_of(n, alpha, lengths, seed=n + beams)
    trie, csr = Trie(table), CSRTrie.from_table(table)
    model = decoder(n * beams, table.vocab_size)
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(beams))
    logp = prefix_logprobs(model, z, table)
    for lp in (0.0, 0.7, 1.0, -0.5):
        for max_len in (None, csr.max_len - 1):
            T = csr.max_len if max_len is None else max_len
            for dense_ratio in (0.0, float("inf")):  # sparse and dense constraint paths
                r = beam_search(model, z, csr, beams, lp, max_len=max_len, early_stopping=early_stopping,
                                dense_ratio=dense_ratio)
                for q in range(len(z)):
                    same(engine_list(r, q), reference(logp[q], trie, beams, T, lp, early_stopping))


@torch.no_grad()
def hf_list(model, z, table, beams, lp, early_stopping):
    trie = Trie(table)
    out = model.t5.generate(encoder_outputs=model.encoder_outputs(z), num_beams=beams, num_return_sequences=beams,
                            max_new_tokens=trie.max_len, prefix_allowed_tokens_fn=prefix_allowed_fn(trie),
                            length_penalty=lp, early_stopping=early_stopping, do_sample=False, output_scores=True,
                            return_dict_in_generate=True)
    seqs = out.sequences[:, 1:].view(len(z), beams, -1).tolist()
    scores = out.sequences_scores.view(len(z), beams).tolist()

    def cut(s):
        return tuple(s[: s.index(EOS) + 1]) if EOS in s else tuple(s)

    return [[(cut(s), sc) for s, sc in zip(seqs[q], scores[q])] for q in range(len(z))]


def test_placeholder_beams_stop_hf_early_and_the_engine_searches_on():
    """10 identifiers, beam 7, length_penalty 0.7: HF's finished list fills with placeholder entries and
    stops some queries; the engine equals the reference there (and HF wherever HF has no placeholder)."""
    table = table_of(10, 3, (1, 4), seed=1)
    trie, csr = Trie(table), CSRTrie.from_table(table)
    model = decoder(71, table.vocab_size)
    z = torch.randn(16, 8, generator=torch.Generator().manual_seed(7))
    logp = prefix_logprobs(model, z, table)
    r = beam_search(model, z, csr, 7, 0.7)
    hf = hf_list(model, z, table, 7, 0.7, True)
    differs = 0
    for q in range(len(z)):
        eng = engine_list(r, q)
        same(eng, reference(logp[q], trie, 7, csr.max_len, 0.7))
        if all(sc > GHOST for _, sc in hf[q]):
            same(eng, hf[q])
        else:
            differs += [s for s, _ in eng] != [s for s, sc in hf[q] if sc > GHOST]
    assert differs > 0, "no query where HF's placeholders changed its result: the case does not test the contract"


@pytest.mark.parametrize("lp", [1.0, 2.0])
def test_early_stopping_never_matches_hf(lp):
    """HF's "never" with length_penalty > 0 bounds a running beam at the maximal length, so it searches on
    where False stops (the settings include such queries).  Compared wherever HF has no placeholder entry."""
    compared = differs_from_false = 0
    tables = [(22, 3, (1, 5)), (30, 14, (1, 4)), (14, 4, (2, 3)), (12, 2, (1, 6)), (20, 3, (1, 6)), (10, 3, (1, 4))]
    for k, (n, alpha, lengths) in enumerate(tables):
        table = table_of(n, alpha, lengths, seed=k, V=16)
        csr = CSRTrie.from_table(table)
        model = decoder(k + 3, table.vocab_size)
        z = torch.randn(8, 8, generator=torch.Generator().manual_seed(k))
        for beams in (2, 3, 5, 8):
            never = beam_search(model, z, csr, beams, lp, early_stopping="never")
            false = beam_search(model, z, csr, beams, lp, early_stopping=False)
            for q, h in enumerate(hf_list(model, z, table, beams, lp, "never")):
                if all(sc > GHOST for _, sc in h):
                    same(engine_list(never, q), h)
                    compared += 1
                    differs_from_false += engine_list(false, q) != engine_list(never, q)
    assert compared >= 150 and differs_from_false > 0, (compared, differs_from_false)


@pytest.mark.parametrize("dense_ratio", [0.0, float("inf")])
def test_empty_slots_have_length_zero(dense_ratio):
    """max_len shorter than the identifiers and fewer prefixes than beams: empty slots are -inf, length 0,
    PAD tokens and node -1 on both constraint paths."""
    table = table_of(8, 2, (3, 3), seed=1)  # all 8 identifiers: 2 prefixes of length 1, 4 of length 2
    csr = CSRTrie.from_table(table)
    model = decoder(2, table.vocab_size)
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    for max_len in (1, 2):
        r = beam_search(model, z, csr, 6, max_len=max_len, dense_ratio=dense_ratio)
        empty = r.scores == float("-inf")
        assert empty.any() and (~empty).any()
        assert (r.lengths[empty] == 0).all() and (r.tokens[empty] == PAD).all() and (r.nodes[empty] == -1).all()
        assert (r.lengths[~empty] == max_len).all() and (r.nodes[~empty] >= 0).all()
        assert (r.tokens[~empty][:, :max_len] != PAD).all()


def test_early_stopping_rejects_unknown_modes():
    table = table_of(6, 2, (1, 3), seed=0)
    with pytest.raises(ValueError, match="early_stopping"):
        beam_search(decoder(0, table.vocab_size), torch.randn(1, 8), CSRTrie.from_table(table), 2,
                    early_stopping="sometimes")
