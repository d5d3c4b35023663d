"""genretr.backbones.cart: CART's fusion seq2seq, its R-Drop loss, and its step decoder under the engine."""
import random

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from genretr.backbones.cart import CartSeq2Seq, bidirectional_kl
from genretr.decoding.csr_trie import CSRTrie
from genretr.decoding.engine import beam_search, constrained_beam_search
from genretr.errors import GenretrError
from genretr.identifiers.base import EOS, PAD, IdTable
from tests.conftest import compose_cfg


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(seed=0, V=12, src_V=20, dropout=0.0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, src_vocab_size=src_V, input_dim=8, d_model=32, heads=2, d_ff=64, dropout=dropout,
               encoder_layers=3, decoder_layers=2, max_src_len=16, max_tgt_len=8)
    return CartSeq2Seq(**{**cfg, **kw})


def random_src(N=5, L=7, src_V=20, seed=1):
    """Query tokens with ragged right padding (row 0 full length, the others shorter)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(1, src_V, (N, L), generator=g)
    for n in range(1, N):
        src[n, int(torch.randint(1, L, (), generator=g)):] = 0
    return src


def random_labels(N=5, T=5, V=12, seed=2):
    """Identifiers of 1..T-1 tokens, then EOS, then PAD."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(2, V, (N, T), generator=g)
    for n in range(N):
        k = int(torch.randint(1, T, (), generator=g))
        labels[n, k], labels[n, k + 1:] = EOS, PAD
    return labels


def decoder_inputs(labels):
    return torch.cat([torch.full_like(labels[:, :1], PAD), labels[:, :-1]], 1)


def test_shapes():
    m = tiny().eval()
    src, labels = random_src(), random_labels()
    assert m.logits(src, decoder_inputs(labels)).shape == (5, 5, 12)
    layers, z, mask = m.encode(src)
    assert len(layers) == 3 and z.shape == layers[0].shape and mask.shape == (5, 1, 1, 7)
    assert m(src, labels).shape == ()


def test_fusion_false_removes_exactly_the_fusion_parameters():
    d, S, layers = 32, 3, 2
    full, plain = tiny(fusion=True), tiny(fusion=False)
    names = [n for n, _ in plain.named_parameters()]
    assert not [n for n in names if any(k in n for k in ("coarse", "fine", "gate"))]
    attention = 4 * d * d + 4 * d
    per_layer = 2 * attention + S * 2 * d * d + d  # coarse + fine attentions, gates W_i, shared bias b (Eq. 3-5)
    expected = S * d * d + d + layers * per_layer  # + Eq. 2's W, b
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(full) - count(plain) == expected


def test_xavier_init_and_padding_row():
    m = tiny()
    w = m.decoder[0].fine.q.weight
    bound = (6 / (w.shape[0] + w.shape[1])) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    assert m.decoder[0].fine.q.bias.abs().max() == 0
    assert m.src_embed.weight[0].abs().max() == 0


def test_rdrop_weight_zero_is_plain_cross_entropy():
    m = tiny(dropout=0.3, rdrop_weight=0.0).train()
    src, labels = random_src(), random_labels()
    torch.manual_seed(7)
    loss = m(src, labels)
    torch.manual_seed(7)
    ref = F.cross_entropy(m.logits(src, decoder_inputs(labels)).flatten(0, 1), labels.flatten(), ignore_index=PAD)
    assert torch.allclose(loss, ref)


def test_consistency_false_disables_rdrop():
    assert tiny(rdrop_weight=0.15, consistency=False).omega == 0.0
    assert tiny(rdrop_weight=0.15).omega == 0.15


def test_rdrop_loss_terms():
    src, labels = random_src(), random_labels()
    m = tiny(dropout=0.3, rdrop_weight=0.15).train()
    ce, kl = m.loss_terms(src, labels)
    assert kl > 1e-4  # two passes with independent dropout differ
    torch.manual_seed(3)
    loss = m(src, labels)
    torch.manual_seed(3)
    ce, kl = m.loss_terms(src, labels)
    assert torch.allclose(loss, ce + 0.15 * kl)
    m.eval()  # no dropout: one pass, no KL
    ce, kl = m.loss_terms(src, labels)
    assert kl == 0 and torch.allclose(m(src, labels), ce)
    same = tiny(dropout=0.0, rdrop_weight=0.15).train()  # dropout 0: two identical passes, KL = 0, loss = CE
    ce, kl = same.loss_terms(src, labels)
    assert abs(float(kl)) < 1e-6
    ref = F.cross_entropy(same.logits(src, decoder_inputs(labels)).flatten(0, 1), labels.flatten(), ignore_index=PAD)
    assert torch.allclose(ce, ref, atol=1e-6)


def test_bidirectional_kl_matches_eq7():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(3, 4, 9, generator=g), torch.randn(3, 4, 9, generator=g)
    keep = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    lp, lq = p.log_softmax(-1), q.log_softmax(-1)
    kl_pq = F.kl_div(lq, lp, log_target=True, reduction="none").sum(-1)  # KL(P || Q)
    kl_qp = F.kl_div(lp, lq, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(bidirectional_kl(p, q, keep), (kl_pq + kl_qp)[keep].mean(), atol=1e-6)


def test_loss_decreases_on_copy_task():
    """Identifier = the query's tokens (shifted into the identifier vocabulary) + EOS."""
    m = tiny(V=10, src_V=10, dropout=0.1, rdrop_weight=0.15).train()
    g = torch.Generator().manual_seed(0)
    src = torch.randint(1, 9, (32, 3), generator=g)
    labels = torch.cat([src + 1, torch.full((32, 1), EOS)], 1)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = m.training_step({"src": src, "labels": labels})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5
    m.eval()
    pred = m.logits(src, decoder_inputs(labels)).argmax(-1)
    assert (pred == labels).float().mean() > 0.9


@pytest.mark.parametrize("schedule,last_lr", [("constant", 1e-3), ("cosine", 0.0)])
def test_training_step_logs_under_a_trainer(schedule, last_lr):
    """Warm-up over 2 steps, then constant, or a cosine decay to zero at the last step (Sec. 4)."""
    m = tiny(dropout=0.1, lr=1e-3, warmup_steps=2, schedule=schedule)
    data = [{"src": s, "labels": y} for s, y in zip(random_src(16), random_labels(16))]
    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(m, DataLoader(data, batch_size=4))
    assert "decoder/loss" in trainer.callback_metrics and "decoder/kl" in trainer.callback_metrics
    opt = trainer.optimizers[0]
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == pytest.approx(last_lr, abs=1e-12)


def test_bad_input_is_a_clear_error():
    m = tiny().eval()
    src = random_src()
    with pytest.raises(GenretrError, match="no tokens"):
        m.logits(torch.cat([src, torch.zeros(1, 7, dtype=torch.long)]), torch.zeros(6, 2, dtype=torch.long))
    with pytest.raises(GenretrError, match="max_src_len"):
        m.encode(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(GenretrError, match="src token ids"):
        m.encode(torch.full((1, 3), 20))
    with pytest.raises(GenretrError, match="label ids"):
        m(src, torch.full((5, 3), 12))
    with pytest.raises(GenretrError, match="dicts"):
        m.training_step((src, random_labels()))


@pytest.mark.parametrize("fusion", [True, False])
def test_step_decoder_matches_teacher_forcing(fusion):
    """N queries x S beams each (different sequences per beam), a cache reorder halfway: the step logits
    equal the teacher-forced logits of the reordered sequences at every position."""
    m = tiny(fusion=fusion).eval()
    N, S, T = 4, 3, 6
    src = random_src(N)
    g = torch.Generator().manual_seed(5)
    seqs = torch.randint(2, 12, (N, S, T), generator=g)
    sd = m.step_decoder()
    state = sd.prepare(src)
    cache = sd.new_cache(N * S, T)
    perm = torch.stack([torch.randint(0, S, (S,), generator=g) for _ in range(N)])  # beam origins at t = 3
    for t in range(T):
        if t == 3:
            rows = (torch.arange(N).unsqueeze(1) * S + perm).view(-1)
            sd.reorder(cache, rows, t)
            seqs = torch.cat([seqs.gather(1, perm.unsqueeze(-1).expand(N, S, T))[:, :, :t], seqs[:, :, t:]], 2)
        tokens = decoder_inputs(seqs.view(N * S, T))[:, t]
        step = sd.step(tokens, t, N, S, state, cache, T)
        full = m.logits(src.repeat_interleave(S, 0), decoder_inputs(seqs.view(N * S, T)))[:, t]
        assert step.shape == (N * S, 12)
        assert torch.allclose(step, full, atol=1e-4), (t, (step - full).abs().max())


def random_table(n=25, V=12, seed=0):
    rng = random.Random(seed)
    seqs = set()
    while len(seqs) < n:
        seqs.add(tuple(rng.randint(2, V - 1) for _ in range(rng.randint(2, 4))))
    return IdTable.from_lists([f"i{k}" for k in range(n)], [list(s) for s in sorted(seqs)],
                              ["<pad>", "</s>"] + [f"t{k}" for k in range(2, V)])


@pytest.mark.parametrize("fusion", [True, False])
def test_engine_beam_search_scores_are_teacher_forced_logprobs(fusion):
    m = tiny(fusion=fusion).eval()
    table = random_table()
    trie = CSRTrie.from_table(table)
    src = random_src(6)
    valid = {table.tokens(i) for i in table.item_ids}
    res = beam_search(m, src, trie, num_beams=5)
    for q in range(len(src)):
        assert torch.all(res.scores[q, :-1] >= res.scores[q, 1:])
        seqs = res.tokens[q]
        assert all(tuple(s[: int(n)].tolist()) in valid for s, n in zip(seqs, res.lengths[q]))
        tf = m.sequence_logprob(src[q:q + 1].repeat(len(seqs), 1), seqs)
        assert torch.allclose(res.scores[q], tf, atol=1e-4)
    ranked, scores, qps = constrained_beam_search(m, {"src": src}, trie, table, num_beams=5, top_k=5,
                                                  return_scores=True)
    assert all(len(r) == 5 and set(r) <= set(table.item_ids) for r in ranked) and qps > 0


def test_engine_beam_as_wide_as_the_trie_ranks_every_identifier_exactly():
    """With as many beams as identifiers nothing is pruned: the engine returns every identifier, in the
    order of its teacher-forced log-probability."""
    m = tiny().eval()
    table = random_table(n=12)
    trie = CSRTrie.from_table(table)
    src = random_src(3)
    ranked, scores, _ = constrained_beam_search(m, src, trie, table, num_beams=12, top_k=12, return_scores=True)
    seqs = torch.from_numpy(table.sequences).long()
    for q in range(len(src)):
        tf = m.sequence_logprob(src[q:q + 1].repeat(len(seqs), 1), seqs)
        order = [table.item_ids[i] for i in tf.argsort(descending=True).tolist()]
        assert ranked[q] == order
        assert torch.allclose(torch.tensor(scores[q]), tf.sort(descending=True).values, atol=1e-4)


def test_backbone_config_instantiates(tmp_path):
    cfg = compose_cfg(["backbone=cart", "logger=none"], tmp_path, tmp_path / "cache")
    m = instantiate(cfg.backbone.model, vocab_size=30, src_vocab_size=50, input_dim=16)
    assert isinstance(m, CartSeq2Seq) and m.omega == 0.15 and m.hparams.max_src_len == cfg.backbone.max_src_len
    assert len(m.encoder) == 3 and len(m.decoder) == 3 and cfg.backbone.input == "tokens"
    cfg = compose_cfg(["backbone=cart", "logger=none", "++train.consistency=false"], tmp_path, tmp_path / "cache")
    assert instantiate(cfg.backbone.model, vocab_size=30, src_vocab_size=50, input_dim=16).omega == 0.0


@pytest.mark.parametrize("causal", [False, True])
def test_math_attention_is_sdpa(causal):
    """The bf16-on-CPU attention path (plain matmuls, fp32 softmax) computes what SDPA does, fully masked
    rows included (0), and its gradients too; in fp32 the two agree to rounding."""
    import torch.nn.functional as F

    from genretr.backbones.cart_fusion import math_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 5, 8, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.rand(3, 1, 1, 5, generator=g) > 0.3
    mask[1] = False  # a query that sees nothing
    for m in (None, mask):
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal)
        out = math_attention(q, k, v, m, causal)
        assert torch.allclose(out, ref, atol=1e-5)
        gr = torch.autograd.grad(ref.square().sum(), (q, k, v))
        go = torch.autograd.grad(out.square().sum(), (q, k, v))
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(go, gr))
    assert (math_attention(q, k, v, mask, causal)[1] == 0).all()
    low = math_attention(*(x.detach().bfloat16() for x in (q, k, v)), mask, causal)
    assert low.dtype == torch.bfloat16 and torch.allclose(low.float(), ref.detach(), atol=0.05)
