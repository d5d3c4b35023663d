"""The engine's bf16 model step, torch.compile of its step, and `topk_agreement` (issue #18).

bf16 rounds the weights (a model perturbation of ~0.06 nats per identifier on the small model here): the best
identifier is the fp32 one for every query, but the tail of a top-10 list, where identifiers are close in
score, reorders.  Observed on the trained-ish model below (200 identifiers, 10 beams): top-1 1.00, top-10 as
a set 0.92, top-10 in order 0.73; the asserted thresholds leave room for BLAS differences.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genretr.backbones.cart import CartSeq2Seq
from genretr.backbones.t5_prefix import T5PrefixDecoder
from genretr.decoding.csr_trie import CSRTrie
from genretr.decoding.engine import beam_search, constrained_beam_search, rank_items, step_decoder_of, topk_agreement
from genretr.backbones.t5_step import KVCache


def code_table(n, codes=(8, 8, 8), seed=0):
    """Distinct random code identifiers (n, len(codes) + 1): level i uses tokens 2 + 8i .. , then EOS."""
    rng = np.random.default_rng(seed)
    cols = [rng.integers(0, c, 4 * n) + 2 + 8 * i for i, c in enumerate(codes)]
    seqs = np.unique(np.stack(cols + [np.ones(4 * n, np.int64)], 1), axis=0)[:n]
    return seqs, 2 + 8 * len(codes)


def tiny_setting(n, codes, layers, seed, z_seed):
    """(trie, a small random eval-mode T5PrefixDecoder over it, 6 query vectors of 8 dims)."""
    seqs, V = code_table(n, codes=codes)
    torch.manual_seed(seed)
    m = T5PrefixDecoder(vocab_size=V, input_dim=8, d_model=32, num_layers=layers, num_heads=2, d_ff=64, dropout=0.0,
                        prefix_len=2, prefix_hidden=16).eval()
    return CSRTrie.from_sequences(seqs, V), m, torch.randn(6, 8, generator=torch.Generator().manual_seed(z_seed))


@pytest.fixture(scope="module")
def trained():
    """A small T5PrefixDecoder fitted for 150 steps to map item vectors to their identifiers (peaked, as trained
    decoders are; a random model's near-flat scores make any rounding reorder its beams)."""
    seqs, V = code_table(200)
    torch.manual_seed(0)
    m = T5PrefixDecoder(vocab_size=V, input_dim=16, d_model=64, num_layers=2, num_heads=4, d_ff=128, dropout=0.0,
                        prefix_len=4, prefix_hidden=64)
    items = torch.nn.functional.normalize(torch.randn(len(seqs), 16), dim=1)
    labels = torch.from_numpy(seqs)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(150):
        loss = m(items + 0.05 * torch.randn_like(items), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    queries = items + 0.1 * torch.randn(items.shape, generator=torch.Generator().manual_seed(1))
    return m.eval(), CSRTrie.from_sequences(seqs, V), queries


def test_bf16_search_agrees_with_fp32(trained):
    model, trie, z = trained
    a = beam_search(model, z, trie, 10)
    b = beam_search(model, z, trie, 10, step_dtype="bfloat16")
    assert b.scores.dtype == torch.float32  # sums, finished set and ranking stay float32
    ra, _ = rank_items(a, None, trie, 10)
    rb, _ = rank_items(b, None, trie, 10)
    assert np.mean([x[0] == i for i, x in enumerate(ra)]) > 0.6  # the model did learn
    assert topk_agreement(ra, rb, 1) >= 0.97
    assert topk_agreement(ra, rb, 10, ordered=False) >= 0.8
    assert topk_agreement(ra, rb, 10) >= 0.55
    live = a.scores > float("-inf")
    assert (a.scores - b.scores)[live].abs().mean() < 0.2
    # and the default stays exact: float32 twice is bit-identical
    assert torch.equal(beam_search(model, z[:20], trie, 10).scores, a.scores[:20])


def test_bf16_step_decoder_holds_bf16_weights_and_cache(trained):
    model, trie, z = trained
    sd = step_decoder_of(model, "bfloat16")
    assert sd.lm_head.dtype == sd.embed.dtype == sd.cross_kv.dtype == torch.bfloat16
    assert all(w.dtype == torch.bfloat16 for layer in sd.layers for w in layer.values() if torch.is_tensor(w))
    cross, _ = sd.prepare(z[:3])
    assert cross[0][0].dtype == torch.bfloat16
    cache = sd.new_cache(6, 4)
    assert isinstance(cache, KVCache) and cache.layers[0][0].dtype == torch.bfloat16
    assert model.t5.lm_head.weight.dtype == torch.float32  # the model itself is untouched
    with pytest.raises(ValueError, match="step_dtype"):
        beam_search(model, z[:2], trie, 2, step_dtype="float8")


def cart_model(V, seed=0, tied=None):
    torch.manual_seed(seed)
    return CartSeq2Seq(vocab_size=V, src_vocab_size=30, d_model=32, heads=2, d_ff=64, dropout=0.0, encoder_layers=2,
                       decoder_layers=2, max_src_len=8, tied_src_tokens=tied).eval()


@pytest.mark.parametrize("tied", [None, [[5, 3], [7, 12]]], ids=["plain", "tied-query-words"])
def test_cart_bf16_step_runs_on_a_bf16_twin(tied):
    """The twin holds the model's non-persistent buffers: positional encodings, and the query words tied to
    identifier tokens (the describe add-on's; not in the hyperparameters the twin is built from)."""
    seqs, V = code_table(60)
    trie = CSRTrie.from_sequences(seqs, V)
    m = cart_model(V, tied=tied)
    src = torch.randint(2, 30, (12, 6), generator=torch.Generator().manual_seed(3))
    sd = step_decoder_of(m, torch.bfloat16)
    assert sd.model is not m and next(sd.model.parameters()).dtype == torch.bfloat16
    assert next(m.parameters()).dtype == torch.float32
    twin = dict(sd.model.named_buffers())
    for name, b in m.named_buffers():
        assert torch.equal(twin[name], b.to(twin[name].dtype)), name
    assert (tied is None) == (sd.model.src_targets is None)
    a = beam_search(m, src, trie, 5)
    b = beam_search(m, src, trie, 5, step_dtype="bfloat16")
    assert b.scores.dtype == torch.float32
    # a random CART: flat scores, yet the bf16 step stays close to the fp32 one
    live = a.scores > float("-inf")
    assert (a.scores - b.scores)[live].abs().max() < 0.3
    assert (a.tokens[:, 0] == b.tokens[:, 0]).all(-1).float().mean() >= 0.5


@pytest.mark.parametrize("which", ["t5", "cart"])
def test_compiled_step_is_one_graph_and_equal(which):
    """`compile` traces the whole step with fullgraph=True (any host sync or graph break fails); the eager
    backend keeps this fast on CPU (`compile=True` uses inductor, and CUDA graphs on a GPU)."""
    seqs, V = code_table(80, codes=(4, 8, 8))
    trie = CSRTrie.from_sequences(seqs, V)
    if which == "t5":
        torch.manual_seed(0)
        m = T5PrefixDecoder(vocab_size=V, input_dim=8, d_model=32, num_layers=2, num_heads=2, d_ff=64, dropout=0.0,
                            prefix_len=2, prefix_hidden=16).eval()
        z = torch.randn(5, 8, generator=torch.Generator().manual_seed(4))
    else:
        m, z = cart_model(V), torch.randint(2, 30, (5, 6), generator=torch.Generator().manual_seed(4))
    torch._dynamo.reset()
    opts = {"backend": "eager", "fullgraph": True}
    for dense_ratio in (0.0, float("inf")) if which == "t5" else (0.0,):
        a = beam_search(m, z, trie, 4, early_stopping=False, dense_ratio=dense_ratio)
        b = beam_search(m, z, trie, 4, early_stopping=False, dense_ratio=dense_ratio, compile=opts)
        assert torch.equal(a.tokens, b.tokens) and torch.allclose(a.scores, b.scores, atol=1e-5)
    if which == "t5":
        u = beam_search(m, z, None, 3, max_len=3, compile=opts)
        assert torch.equal(u.tokens, beam_search(m, z, None, 3, max_len=3).tokens)


def test_compiled_searches_of_many_settings_are_not_stopped_by_the_recompile_limit(monkeypatch):
    """Each compiled search of a new setting (here: beams) adds a graph per step position; torch's default limit
    of 8 graphs a function is a hard failure under fullgraph=True (the decoding bench's 9th compiled setting
    failed with FailOnRecompileLimitHit)."""
    _, m, z = tiny_setting(10, (4,), layers=1, seed=0, z_seed=1)
    torch._dynamo.reset()
    for name in ("recompile_limit", "accumulated_recompile_limit"):  # torch's defaults, as a new process has them
        monkeypatch.setattr(torch._dynamo.config, name, {"recompile_limit": 8}.get(name, 256))
    opts = {"backend": "eager", "fullgraph": True, "dynamic": False}  # static shapes, as compile=True
    for beams in range(1, 11):  # unconstrained, one step: one graph per setting
        r = beam_search(m, z[:2], None, beams, max_len=1, compile=opts)
        assert torch.equal(r.tokens, beam_search(m, z[:2], None, beams, max_len=1).tokens)


def test_exit_check_does_not_change_results():
    """The early-exit test is the only host sync; never testing (exit_every=0) runs every step, same result."""
    trie, m, z = tiny_setting(40, (3, 4, 8), layers=1, seed=1, z_seed=5)
    for es in (True, False, "never"):
        a = beam_search(m, z, trie, 3, 1.0, early_stopping=es, exit_every=1)
        b = beam_search(m, z, trie, 3, 1.0, early_stopping=es, exit_every=0)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.scores, b.scores)


def test_constrained_beam_search_passes_the_step_dtype(trained):
    model, trie, z = trained
    from genretr.identifiers.base import IdTable

    seqs = trie.sequences()
    table = IdTable.from_lists([f"i{k}" for k in range(len(seqs))], [[t for t in s if t > 1] for s in seqs.tolist()],
                               ["<pad>", "</s>"] + [f"t{k}" for k in range(2, trie.vocab_size)])
    r32, _ = constrained_beam_search(model, z[:30], trie, table, 10, 10)
    r16, _ = constrained_beam_search(model, z[:30], trie, table, 10, 10, step_dtype="bfloat16")
    assert topk_agreement(r32, r16, 1) >= 0.9 and topk_agreement(r32, r32, 10) == 1.0


def test_topk_agreement():
    a = [["x", "y", "z"], ["p", "q"], ["u"]]
    assert topk_agreement(a, a, 10) == 1.0
    b = [["x", "z", "y"], ["p", "q", "r"], ["v"]]
    assert topk_agreement(a, b, 1) == pytest.approx(2 / 3)
    assert topk_agreement(a, b, 2) == pytest.approx(1 / 3)  # [p, q] == [p, q]; [x, y] != [x, z]
    assert topk_agreement(a, b, 3, ordered=False) == pytest.approx(1 / 3)  # {x, y, z}; {p, q} != {p, q, r}
    assert topk_agreement([], [], 10) == 1.0
    with pytest.raises(ValueError):
        topk_agreement(a, b[:2], 10)


def test_bf16_self_attention_matches_sdpa_on_the_same_inputs(trained):
    """T5StepDecoder.attend_cache in bf16 (products in the cache layout, fp32 softmax) against fp32 SDPA fed the
    same bf16-rounded q, k, v and bias: equal to bf16 rounding of the output."""
    m, _, _ = trained
    sd32, sd16 = step_decoder_of(m), step_decoder_of(m, "bfloat16")
    g = torch.Generator().manual_seed(0)
    NS, H, dk, t = 12, sd16.H, sd16.dk, 4
    q = torch.randn(NS, H, dk, generator=g).bfloat16()
    k, v = (torch.randn(NS, t + 1, H, dk, generator=g).bfloat16() for _ in range(2))
    bias = sd16.position_bias(8)[t, :, :, : t + 1]  # bf16, -inf above the diagonal cut away
    out = sd16.attend_cache(q, k, v, bias)
    assert out.dtype == torch.bfloat16 and out.shape == (NS, H, dk)
    ref = F.scaled_dot_product_attention(q.float().unsqueeze(2), k.float().transpose(1, 2), v.float().transpose(1, 2),
                                         attn_mask=bias.float(), scale=1.0).squeeze(2)  # (NS, H, dk)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    # fp32: the same products, to fp32 rounding
    fp32 = sd32.attend_cache(q.float(), k.float(), v.float(), bias.float())
    torch.testing.assert_close(fp32, ref, rtol=1e-5, atol=1e-5)


def test_pooled_caches_are_reused_by_shape_and_change_no_result():
    """A compiled CUDA search takes its KV cache from `kv_cache_pool` (its graphs then replay in the next search
    instead of being recorded again): the pool hands back one cache per shape, and a search over a reused,
    dirty cache returns what a fresh one does."""
    from genretr.backbones.t5_step import kv_cache, kv_cache_pool

    assert kv_cache(2, 4, 3, 2, 8, "cpu") is not kv_cache(2, 4, 3, 2, 8, "cpu")  # outside the pool: new ones
    with kv_cache_pool():
        a = kv_cache(2, 4, 3, 2, 8, "cpu")
        a.cur = 1
        assert kv_cache(2, 4, 3, 2, 8, "cpu") is a and a.cur == 0 and kv_cache(2, 5, 3, 2, 8, "cpu") is not a
    with kv_cache_pool(enabled=False):
        assert kv_cache(2, 4, 3, 2, 8, "cpu") is not a
    trie, m, z = tiny_setting(60, (4, 8, 8), layers=2, seed=2, z_seed=3)
    fresh = beam_search(m, z, trie, 4, batch_size=3)
    with kv_cache_pool():
        beam_search(m, torch.randn(6, 8), trie, 4, batch_size=3)  # leaves the pooled cache dirty
        again = beam_search(m, z, trie, 4, batch_size=3)
    assert torch.equal(fresh.tokens, again.tokens) and torch.equal(fresh.scores, again.scores)
