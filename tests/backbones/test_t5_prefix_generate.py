"""`T5PrefixDecoder.generate` (the HF baseline) on token-input models whose encoder and decoder depths differ
(issue #18: HF sized its default cache by the encoder's depth and indexed past it)."""
import pytest
import torch

from genretr.backbones.t5_prefix import T5PrefixDecoder
from genretr.decoding.csr_trie import CSRTrie
from genretr.decoding.engine import beam_search
from genretr.decoding.hf import hf_generate, prefix_allowed_fn
from genretr.identifiers.base import EOS, PAD, IdTable

SEQS = [[2, 3], [2, 4, 5], [3], [4, 4], [5, 2, 3], [5, 3]]


def table():
    return IdTable.from_lists([f"i{k}" for k in range(len(SEQS))], SEQS, ["<pad>", "</s>"] + [f"t{k}" for k in range(2, 8)])


def cut(seq):
    return tuple(seq[: seq.index(EOS) + 1]) if EOS in seq else tuple(seq)


@pytest.mark.parametrize("encoder_layers,decoder_layers", [(1, 2), (3, 2), (1, 4)])
def test_generate_with_differing_depths(encoder_layers, decoder_layers):
    torch.manual_seed(0)
    m = T5PrefixDecoder(vocab_size=8, input_dim=6, d_model=32, num_layers=decoder_layers, num_heads=2, d_ff=64,
                        dropout=0.0, prefix_len=2, prefix_hidden=16, input="tokens", encoder_layers=encoder_layers,
                        src_vocab_size=20).eval()
    g = torch.Generator().manual_seed(1)
    src = torch.randint(2, 20, (3, 5), generator=g)
    src[1, 3:] = PAD
    q = {"z": torch.randn(3, 6, generator=g), "src": src}
    t = table()
    csr = CSRTrie.from_table(t)
    beams = 3
    seqs, scores = m.generate(q, beams, csr.max_len, prefix_allowed_fn(csr))
    ids = {t.tokens(i) for i in t.item_ids}
    found = [cut(s) for s in seqs.tolist()]
    assert all(s in ids for s in found)
    # HF's scores are the teacher-forced log-probabilities (length_penalty 0)
    rep = {k: v.repeat_interleave(beams, 0) for k, v in q.items()}
    torch.testing.assert_close(scores, m.sequence_logprob(rep, seqs), atol=1e-4, rtol=0)
    # the engine's best identifier is HF's best
    eng = beam_search(m, q, csr, beams)
    for n in range(3):
        assert tuple(eng.tokens[n, 0, : eng.lengths[n, 0]].tolist()) == found[n * beams]
    # and the benchmark's HF path takes the same model
    seqs2, scores2 = hf_generate(m, q, beams, csr.max_len, csr, mode="processor")
    assert torch.equal(seqs2, seqs) and torch.allclose(scores2, scores)
