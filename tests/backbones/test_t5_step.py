"""The T5 step decoder's own kernels (genretr.backbones.t5_step) against the functions they replace."""
import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from genretr.backbones.t5_prefix import T5PrefixDecoder
from genretr.backbones.t5_step import T5StepDecoder, gelu_tanh


def test_gelu_tanh_is_the_tanh_gelu():
    x = torch.cat([torch.linspace(-30, 30, 20001), torch.randn(4096) * 3, torch.tensor([0.0, -0.0, 1e-30, -1e-30])])
    before = x.clone()
    ours = gelu_tanh(x)
    assert torch.equal(x, before)  # the input is not written to
    for ref in (F.gelu(x, approximate="tanh"), ACT2FN["gelu_new"](x)):  # torch's kernel, T5's "gelu_new"
        assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6), (ours - ref).abs().max()
    assert torch.equal(ours[x < -12], torch.zeros_like(ours[x < -12]))  # no overflow below the knee
    assert torch.equal(ours[x > 12], x[x > 12])
    w = torch.randn(16, requires_grad=True)  # with autograd: torch's kernel (the sigmoid form works in place)
    gelu_tanh(w).sum().backward()
    assert w.grad is not None and torch.allclose(gelu_tanh(w.detach()), F.gelu(w.detach(), approximate="tanh"))
    b = (torch.randn(64) * 3).bfloat16()  # other dtypes: torch's kernel itself
    assert torch.equal(gelu_tanh(b), F.gelu(b, approximate="tanh"))


def test_cached_self_attention_is_softmax_attention():
    """`attend_cache` (products in the cache's layout) == HF T5's matmul attention with the causal position bias."""
    torch.manual_seed(0)
    model = T5PrefixDecoder(vocab_size=20, input_dim=8, d_model=32, num_layers=1, num_heads=4, d_ff=64, dropout=0.0,
                            prefix_len=2, prefix_hidden=16).eval()
    sd = T5StepDecoder(model)
    R, T, H, dk = 7, 5, sd.H, sd.dk
    k, v, q = torch.randn(R, T, H, dk), torch.randn(R, T, H, dk), torch.randn(R, H, dk)
    for t in range(T):
        bias = sd.position_bias(T)[t, :, :, : t + 1]  # (H, 1, t+1)
        ours = sd.attend_cache(q, k[:, : t + 1], v[:, : t + 1], bias)
        kt, vt = k[:, : t + 1].transpose(1, 2), v[:, : t + 1].transpose(1, 2)  # (R, H, t+1, dk)
        p = (q.unsqueeze(2) @ kt.transpose(-1, -2) + bias).softmax(-1)  # T5: no 1/sqrt(d_kv)
        ref = (p @ vt).squeeze(2)
        assert ours.shape == (R, H, dk)
        assert torch.allclose(ours, ref, atol=1e-5), (t, (ours - ref).abs().max())
