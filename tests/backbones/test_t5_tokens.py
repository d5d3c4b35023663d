"""T5PrefixDecoder with input=tokens (GRACE on T5, DSI-style): a T5 encoder over query tokens, images as prefix."""
import pytest
import torch

from genretr.backbones.t5_prefix import T5PrefixDecoder
from genretr.decoding.csr_trie import CSRTrie
from genretr.decoding.engine import T5StepDecoder, beam_search, constrained_beam_search
from genretr.identifiers.base import EOS, PAD, IdTable


def model(seed=0, **kw):
    torch.manual_seed(seed)
    return T5PrefixDecoder(vocab_size=9, input_dim=6, d_model=32, num_layers=2, num_heads=2, d_ff=64, dropout=0.0,
                           prefix_len=3, prefix_hidden=16, input="tokens", encoder_layers=1, src_vocab_size=20,
                           **kw).eval()


def queries(n=4, L=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, 20, (n, L), generator=g)
    src[1, 3:] = PAD  # padding inside a text query
    src[2] = PAD  # no text: an image memorize sample, read from its prefix vectors
    return {"z": torch.randn(n, 6, generator=g), "src": src}


def test_requires_a_source_vocabulary():
    with pytest.raises(ValueError, match="src_vocab_size"):
        T5PrefixDecoder(vocab_size=9, input_dim=6, input="tokens")


def test_padding_does_not_change_the_encoding():
    m, q = model(), queries()
    states, mask = m.encode(q)
    assert mask.shape == (4, 3 + 5) and not mask[2, 3:].any() and mask[2, :3].all() and not mask[0, :3].any()
    longer = {"z": q["z"], "src": torch.cat([q["src"], torch.zeros(4, 2, dtype=torch.long)], 1)}
    s2, m2 = m.encode(longer)
    assert torch.allclose(states[mask], s2[m2], atol=1e-5)


def test_step_decoder_matches_teacher_forcing_with_masks():
    m, q = model(), queries()
    seqs = torch.tensor([[3, 4, EOS], [5, 2, EOS], [2, 2, EOS], [7, 8, EOS]])
    dec_in = torch.cat([torch.zeros(4, 1, dtype=torch.long), seqs[:, :-1]], 1)
    with torch.no_grad():
        full = m._t5(q, decoder_input_ids=dec_in).logits
    sd = T5StepDecoder(m)
    state, cache = sd.prepare(q), sd.new_cache(4, 3)
    for t in range(3):
        logits = sd.step(dec_in[:, t], t, 4, 1, state, cache, 3)
        assert torch.allclose(logits, full[:, t], atol=1e-4)


def test_engine_scores_are_teacher_forced_logprobs():
    m, q = model(), queries()
    table = IdTable.from_lists([f"i{k}" for k in range(6)], [[2, 3], [2, 4], [5], [6, 7, 8], [6, 7], [3]],
                               ["<pad>", "</s>"] + [f"t{k}" for k in range(2, 9)])
    res = beam_search(m, q, CSRTrie.from_table(table), num_beams=3)
    for n in range(4):
        seqs = res.tokens[n]
        qn = {k: v[n:n + 1].repeat(3, 1) for k, v in q.items()}
        assert torch.allclose(m.sequence_logprob(qn, seqs), res.scores[n], atol=1e-4)
    rankings, _ = constrained_beam_search(m, q, CSRTrie.from_table(table), table, num_beams=3, top_k=3)
    assert all(r and set(r) <= set(table.item_ids) for r in rankings)


def test_training_step_on_a_dict_batch():
    m = model()
    m.train()
    q = queries()
    batch = {**q, "target_z": torch.randn(4, 6), "labels": torch.tensor([[3, EOS, PAD]] * 4)}
    loss = m.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and m.src_embed.weight.grad is not None
