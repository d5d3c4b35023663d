"""Query words read through the decoder's embedding of the identifier token they stand for (GRACE Sec. 4.5's
describe prompt; `genretr.backbones.tied_source`)."""
import pytest
import torch
from torch import nn

from genretr.backbones.cart import CartSeq2Seq
from genretr.backbones.t5_prefix import T5PrefixDecoder
from genretr.backbones.tied_source import embed_source, target_index


def test_a_tied_word_reads_its_tokens_row_and_trains_it():
    torch.manual_seed(0)
    src_embed, tgt_embed = nn.Embedding(6, 4), nn.Embedding(5, 4)
    index = target_index(6, [[4, 2], [5, 3]])
    assert index.tolist() == [-1, -1, -1, -1, 2, 3] and target_index(6, []) is None
    src = torch.tensor([[1, 4, 5, 2]])
    x = embed_source(src_embed, tgt_embed.weight, index, src)
    assert torch.equal(x[0, 1], tgt_embed.weight[2]) and torch.equal(x[0, 2], tgt_embed.weight[3])
    assert torch.equal(x[0, 0], src_embed.weight[1]) and torch.equal(x[0, 3], src_embed.weight[2])
    x.sum().backward()
    assert src_embed.weight.grad[4:].abs().sum() == 0  # the tied words' own rows are never read
    assert tgt_embed.weight.grad[2:4].abs().sum() > 0
    assert torch.equal(embed_source(src_embed, tgt_embed.weight, None, src), src_embed(src))


def t5(tied):
    torch.manual_seed(0)
    return T5PrefixDecoder(vocab_size=8, input_dim=4, d_model=16, num_layers=1, num_heads=2, d_ff=32, dropout=0.0,
                           prefix_len=2, prefix_hidden=8, input="tokens", encoder_layers=1, src_vocab_size=10,
                           tied_src_tokens=tied).eval()


def cart(tied):
    torch.manual_seed(0)
    return CartSeq2Seq(vocab_size=8, src_vocab_size=10, d_model=16, heads=2, d_ff=32, dropout=0.0, encoder_layers=1,
                       decoder_layers=1, max_src_len=8, max_tgt_len=4, tied_src_tokens=tied).eval()


@pytest.mark.parametrize("build,decoder_embedding,states", [
    (t5, lambda m: m.t5.shared, lambda m, src: m.encode({"z": torch.zeros(len(src), 4), "src": src})[0]),
    (cart, lambda m: m.tgt_embed, lambda m, src: m.encode(src)[0][-1])], ids=["t5_tokens", "cart"])
def test_decoders_read_a_tied_word_through_their_token_embedding(build, decoder_embedding, states):
    """Moving the decoder's embedding of token 3 changes what the encoder makes of a query holding word 9 (tied to
    3), and nothing else; untied, word 9 keeps its own row."""
    with_id, without = torch.tensor([[2, 9, 4]]), torch.tensor([[2, 5, 4]])
    for tied in ([[9, 3]], None):
        m = build(tied)
        before = [states(m, s).clone() for s in (with_id, without)]
        with torch.no_grad():
            decoder_embedding(m).weight[3] += 1.0
        after = [states(m, s) for s in (with_id, without)]
        assert torch.equal(before[1], after[1])
        assert torch.equal(before[0], after[0]) != bool(tied)
