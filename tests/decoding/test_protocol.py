"""Every step decoder the engine drives satisfies `genretr.decoding.protocol.StepDecoder`; others are refused."""
import pytest
import torch

from genretr.backbones.cart import CartSeq2Seq
from genretr.backbones.t5_prefix import T5PrefixDecoder
from genretr.decoding.engine import step_decoder_of
from genretr.decoding.protocol import StepDecoder


def test_t5_and_cart_step_decoders_are_step_decoders():
    t5 = T5PrefixDecoder(vocab_size=12, input_dim=4, d_model=16, num_layers=1, num_heads=2, d_ff=32, prefix_len=2,
                         prefix_hidden=8).eval()
    cart = CartSeq2Seq(vocab_size=12, src_vocab_size=20, d_model=16, heads=2, d_ff=32, encoder_layers=1,
                       decoder_layers=1).eval()
    for model in (t5, cart):
        sd = step_decoder_of(model)
        assert isinstance(sd, StepDecoder)
        assert sd.vocab_size == 12 and sd.device == torch.device("cpu")


def test_a_model_whose_step_decoder_lacks_the_protocol_is_refused():
    class Half:
        vocab_size, device = 3, torch.device("cpu")

        def prepare(self, queries):
            return queries

    class Model(torch.nn.Module):
        def step_decoder(self):
            return Half()

    with pytest.raises(TypeError, match="Half is not a StepDecoder .* lacks new_cache, step, reorder"):
        step_decoder_of(Model())


def test_members_list_matches_the_protocol():
    """`missing_members` names exactly what `isinstance(…, StepDecoder)` checks."""
    from genretr.decoding.protocol import MEMBERS

    class Full:
        vocab_size, device = 3, torch.device("cpu")
        prepare = new_cache = step = reorder = staticmethod(lambda *a: None)

    assert isinstance(Full(), StepDecoder)
    for name in MEMBERS:
        partial = type("Partial", (), {k: v for k, v in vars(Full).items() if k != name})
        assert not isinstance(partial(), StepDecoder), name
