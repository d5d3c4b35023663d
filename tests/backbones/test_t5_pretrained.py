"""`T5PrefixDecoder(pretrained=DIR)` (issue 16): a T5 checkpoint written by `save_pretrained` gives the decoder its
shape and its blocks, the identifier tokens new rows; a missing checkpoint is one clear error."""
import json

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from genretr.backbones.t5_prefix import T5PrefixDecoder
from genretr.errors import MissingWeightsError
from genretr.identifiers.base import EOS, PAD
from genretr.run import execute

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random T5 in t5-small's layout (relu feed-forward, 2 + 2 layers), saved as the hub's are."""
    torch.manual_seed(0)
    config = T5Config(vocab_size=100, d_model=24, d_kv=6, d_ff=40, num_layers=2, num_decoder_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, feed_forward_proj="relu")
    path = tmp_path_factory.mktemp("t5-tiny")
    T5ForConditionalGeneration(config).save_pretrained(path)
    return path


def test_the_checkpoint_gives_the_shape_and_the_blocks(checkpoint):
    source = T5ForConditionalGeneration.from_pretrained(checkpoint).state_dict()
    m = T5PrefixDecoder(vocab_size=12, input_dim=6, d_model=256, num_layers=6, d_ff=1024, prefix_len=3,
                        prefix_hidden=16, pretrained=str(checkpoint))
    c = m.t5.config
    assert (c.d_model, c.d_ff, c.num_decoder_layers, c.num_heads, c.feed_forward_proj) == (24, 40, 2, 4, "relu")
    assert c.num_layers == 0 and c.vocab_size == 12  # prefix mode: no encoder layers; the identifiers' vocabulary
    own = m.t5.state_dict()
    blocks = [k for k in source if k.startswith("decoder.block.")]
    assert blocks and all(torch.equal(own[k], source[k]) for k in blocks)
    assert torch.equal(own["decoder.final_layer_norm.weight"], source["decoder.final_layer_norm.weight"])
    assert own["shared.weight"].shape == (12, 24) and m.prefix(torch.randn(2, 6)).shape == (2, 3, 24)
    tokens = T5PrefixDecoder(vocab_size=12, input_dim=6, input="tokens", src_vocab_size=9, pretrained=str(checkpoint))
    enc = [k for k in source if k.startswith("encoder.block.")]
    assert tokens.t5.config.num_layers == 2 and all(torch.equal(tokens.t5.state_dict()[k], source[k]) for k in enc)

    wide = T5PrefixDecoder(vocab_size=100, input_dim=6, pretrained=str(checkpoint))  # T5's own vocabulary size:
    for key in ("shared.weight", "lm_head.weight"):  # the token rows stay new all the same
        assert not torch.equal(wide.t5.state_dict()[key], source[key])

    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)  # it trains: the loss of one batch falls
    z, labels = torch.randn(8, 6), torch.tensor([[3, 4, EOS]] * 4 + [[5, 6, EOS]] * 4)
    losses = []
    for _ in range(5):
        loss = m(z, labels)
        losses.append(float(loss))
        opt.zero_grad(), loss.backward(), opt.step()
    assert losses[-1] < losses[0]


def test_the_checkpoint_loads_into_the_decoder_once(checkpoint, tmp_path, monkeypatch):
    """One T5 is built (HF loads the checkpoint straight into it, no second copy in memory), and it generates with
    the identifiers' PAD and EOS even where the checkpoint's generation config names other tokens."""
    from transformers import GenerationConfig

    odd = tmp_path / "odd-generation-config"
    T5ForConditionalGeneration.from_pretrained(checkpoint).save_pretrained(odd)
    GenerationConfig(decoder_start_token_id=7, eos_token_id=8, pad_token_id=9, max_length=3).save_pretrained(odd)
    built = []
    init = T5ForConditionalGeneration.__init__
    monkeypatch.setattr(T5ForConditionalGeneration, "__init__", lambda self, *a, **k: built.append(1) or init(
        self, *a, **k))
    m = T5PrefixDecoder(vocab_size=12, input_dim=6, prefix_len=3, prefix_hidden=16, pretrained=str(odd))
    assert len(built) == 1 and m.t5.training
    g = m.t5.generation_config
    assert (g.decoder_start_token_id, g.eos_token_id, g.pad_token_id) == (PAD, EOS, PAD)


def test_a_checkpoint_with_a_head_of_its_own_loads_without_its_token_rows(checkpoint, tmp_path):
    """t5-v1_1 / flan-t5 (and old .bin files) store the LM head and the stacks' embed_tokens beside `shared`: at the
    identifiers' vocabulary or at the checkpoint's own, the decoder takes none of them and keeps its rows tied."""
    from safetensors.torch import save_file

    own_head = tmp_path / "own-head"
    T5ForConditionalGeneration.from_pretrained(checkpoint).save_pretrained(own_head)
    rows = {k: v.clone().contiguous() for k, v in T5ForConditionalGeneration.from_pretrained(checkpoint).state_dict()
            .items()}
    rows["lm_head.weight"] = torch.randn(100, 24)
    save_file(rows, own_head / "model.safetensors", metadata={"format": "pt"})
    for vocab in (12, 100):
        t5 = T5PrefixDecoder(vocab_size=vocab, input_dim=6, pretrained=str(own_head)).t5
        assert t5.lm_head.weight is t5.shared.weight is t5.decoder.embed_tokens.weight is t5.encoder.embed_tokens.weight
        assert t5.shared.weight.shape == (vocab, 24) and t5.config.vocab_size == vocab
        assert vocab == 12 or not any(torch.equal(t5.shared.weight, rows[k])
                                      for k in ("shared.weight", "lm_head.weight"))
        assert torch.equal(t5.state_dict()["decoder.block.1.layer.2.DenseReluDense.wo.weight"],
                           rows["decoder.block.1.layer.2.DenseReluDense.wo.weight"])


def test_a_missing_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"backbone.model.pretrained=.*no T5 checkpoint there"):
        T5PrefixDecoder(vocab_size=12, input_dim=6, pretrained=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError, match="no T5 checkpoint there"):
        T5PrefixDecoder(vocab_size=12, input_dim=6, pretrained=str(tmp_path / "empty"))
    from transformers import T5EncoderModel

    T5EncoderModel(T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)).save_pretrained(
        tmp_path / "encoder-only")  # loads as a T5, but without a decoder to take
    with pytest.raises(MissingWeightsError, match="none of its weights is a T5 decoder block"):
        T5PrefixDecoder(vocab_size=12, input_dim=6, pretrained=str(tmp_path / "encoder-only"))
    T5PrefixDecoder.check_weights(str(tmp_path / "encoder-only"))  # before any stage: present, not yet read
    (tmp_path / "encoder-only" / "model.safetensors").unlink()
    for path, problem in (("nowhere", "is not a model directory"), ("empty", "no config.json"),
                          ("encoder-only", "no model.safetensors")):
        with pytest.raises(MissingWeightsError, match=f"no T5 checkpoint there .*{problem}"):
            T5PrefixDecoder.check_weights(str(tmp_path / path))


def test_a_run_decodes_with_the_pretrained_decoder(checkpoint, make_cfg, tmp_path):
    """The config path: `backbone.model.pretrained=DIR` through the train and evaluate stages."""
    cfg = make_cfg(f"backbone.model.pretrained={checkpoint}", cache=tmp_path / "cache")
    metrics = execute(cfg, tmp_path / "run")
    assert f"backbone.model.pretrained={checkpoint}" in json.loads((tmp_path / "run" / "results.json").read_text())[
        "overrides"]
    (trained,) = (tmp_path / "cache").glob("train/*/artifact/model.pt")
    state = torch.load(trained, map_location="cpu")
    assert state["t5.decoder.block.0.layer.0.SelfAttention.q.weight"].shape == (24, 24)  # the checkpoint's width
    assert metrics["t2i"]["R@10"] > 0
