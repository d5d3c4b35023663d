"""Step decoders' shared pieces: the double-buffered self-attention cache (`KVCache`) and the T5 step decoder,
both for the `genretr.decoding.protocol.StepDecoder` protocol (where its inputs and outputs are written down).
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


class KVCache:
    """Self-attention keys/values of every layer, (rows, T, heads, d_kv) each, in two buffers (issue #18).

    A step writes position t of the current buffer; `reorder` gathers the surviving beams' rows (positions
    < upto) with one `index_select` straight into the other buffer and swaps: no temporary, no copy back
    (the in-place gather-then-copy it replaces measured 2.5-6x slower).  The time-major row layout makes
    the selected block of a row contiguous; attention reads ``k[:R, :t+1]`` in that layout."""

    def __init__(self, layers: int, rows: int, T: int, heads: int, dk: int, device, dtype=torch.float32):
        shape = (rows, T, heads, dk)
        # zeros, not empty: rows of dead beam slots are read (and masked) before being written
        self.bufs = [[(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
                      for _ in range(layers)] for _ in range(2)]
        self.cur = 0

    @property
    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.bufs[self.cur]

    def reorder(self, rows: torch.Tensor, upto: int) -> None:
        """New row i <- old row rows[i], positions < upto, into the other buffer, which becomes current."""
        n, nxt = len(rows), self.bufs[1 - self.cur]
        compiling = torch.compiler.is_compiling()
        for (ks, vs), (kn, vn) in zip(self.bufs[self.cur], nxt):
            for src, dst in ((ks, kn), (vs, vn)):
                if compiling:  # dynamo takes no strided `out=`; inductor fuses gather + store into one kernel
                    dst[:n, :upto].copy_(src[:, :upto].index_select(0, rows))
                else:
                    torch.index_select(src[:, :upto], 0, rows, out=dst[:n, :upto])
        self.cur = 1 - self.cur

    def mark_static(self) -> None:
        """Fixed addresses for CUDA graphs (`torch.compile(mode="reduce-overhead")` then keeps the in-place
        writes inside the captured graph)."""
        for buf in self.bufs:
            for k, v in buf:
                torch._dynamo.mark_static_address(k)
                torch._dynamo.mark_static_address(v)


_POOL: dict = {}  # the caches `kv_cache` made inside `kv_cache_pool()`, by shape (kept across searches)
_POOLING = [False]


@contextmanager
def kv_cache_pool(enabled: bool = True):
    """Within it, `kv_cache` hands back the cache made before for the same shape (its contents are stale, as a
    new cache's are zeros: the search masks what it has not written).  A compiled search on CUDA opens it, so
    that its graphs, captured over the cache's fixed addresses, replay in the next search instead of being
    recorded again.  Keeps at most 4 caches."""
    before = _POOLING[0]
    _POOLING[0] = before or bool(enabled)
    try:
        yield
    finally:
        _POOLING[0] = before


def kv_cache(layers: int, rows: int, T: int, heads: int, dk: int, device, dtype=torch.float32) -> KVCache:
    """A `KVCache` (the pooled one of its shape inside `kv_cache_pool`)."""
    if not _POOLING[0]:
        return KVCache(layers, rows, T, heads, dk, device, dtype)
    key = (layers, rows, T, heads, dk, str(device), dtype)
    if key not in _POOL:
        if len(_POOL) >= 4:
            _POOL.pop(next(iter(_POOL)))
        _POOL[key] = KVCache(layers, rows, T, heads, dk, device, dtype)
    cache = _POOL[key]
    cache.cur = 0
    return cache


def reorder_kv_cache(cache, rows: torch.Tensor, upto: int) -> None:
    """`KVCache.reorder` (the step decoders' `reorder`)."""
    cache.reorder(rows, upto)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation (T5's "gelu_new"): 0.5 x (1 + tanh(u)) = x sigmoid(2u),
    u = sqrt(2/pi) (x + 0.044715 x^3).

    On a CPU in float32 the sigmoid form, 2.6x faster than `F.gelu(approximate="tanh")` on an AVX2 CPU, where
    `torch.tanh` costs ~3 ns an element (9% of CART's decoder step; issue #18); the same values to float32
    rounding (max. difference 8e-6 on 960 x 1024 activations of up to 16).  Elsewhere (a GPU's fused kernel,
    bf16, autograd) `F.gelu`."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.requires_grad:  # (in-place ops: no autograd)
        return F.gelu(x, approximate="tanh")
    c = math.sqrt(2.0 / math.pi)
    two_u = (x * x).mul_(2.0 * 0.044715 * c).add_(2.0 * c).mul_(x)
    return two_u.sigmoid_().mul_(x)


class T5StepDecoder:
    """The weights of a `T5PrefixDecoder` (or any HF T5ForConditionalGeneration with a prefix) laid out
    for one-token steps with shared cross-attention and a double-buffered self-attention cache.

    `dtype` (or `cast`): torch.bfloat16 builds every folded weight copy, the cross-attention K/V and the
    cache in bf16 (the encoder / prefix MLP still run in the model's dtype); the logits come out in that
    dtype and the engine casts them to float32 before its log-softmax."""

    compilable = True

    def __init__(self, model, dtype: torch.dtype = torch.float32):
        t5 = getattr(model, "t5", model)
        self.model = model
        cfg = t5.config
        dec = t5.decoder
        self.d, self.H, self.dk = cfg.d_model, cfg.num_heads, cfg.d_kv
        self.inner = self.H * self.dk
        self.eps = cfg.layer_norm_epsilon
        self.vocab_size = t5.lm_head.weight.shape[0]
        self.out_scale = cfg.d_model ** -0.5 if getattr(cfg, "scale_decoder_outputs", False) else None
        self.gated = bool(cfg.is_gated_act)
        act = cfg.dense_act_fn
        if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            self.act = gelu_tanh
        elif act == "gelu":
            self.act = F.gelu
        elif act == "relu":
            self.act = F.relu
        else:
            self.act = dec.block[0].layer[-1].DenseReluDense.act
        self.dtype = dtype
        self.embed = dec.embed_tokens.weight.detach()
        self.layers = []
        cross_kv = []
        for blk in dec.block:
            sa, ca, ff = blk.layer[0], blk.layer[1], blk.layer[-1]
            a, c, f = sa.SelfAttention, ca.EncDecAttention, ff.DenseReluDense
            # T5's RMS-norm weight is folded into the projection that follows it: W @ (w * x) = (W * w) @ x
            w_sa, w_ca, w_ff = (ln.layer_norm.weight.detach() for ln in (sa, ca, ff))
            layer = {
                "qkv": (torch.cat([a.q.weight, a.k.weight, a.v.weight]).detach() * w_sa).contiguous(),
                "o_t": a.o.weight.detach().t(),
                "cq": (c.q.weight.detach() * w_ca).contiguous(),
                "co_t": c.o.weight.detach().t(),
                "wo_t": f.wo.weight.detach().t(),
            }
            if self.gated:
                layer["wi"] = (torch.cat([f.wi_0.weight, f.wi_1.weight]).detach() * w_ff).contiguous()
                layer["d_ff"] = f.wi_0.weight.shape[0]
            else:
                layer["wi"] = (f.wi.weight.detach() * w_ff).contiguous()
            self.layers.append(layer)
            cross_kv += [c.k.weight, c.v.weight]
        self.L = len(self.layers)
        self.cross_kv = torch.cat(cross_kv).detach().contiguous()  # (L * 2 * inner, d)
        head = t5.lm_head.weight.detach() * dec.final_layer_norm.weight.detach()
        self.lm_head = (head * self.out_scale if self.out_scale is not None else head).contiguous()
        self.rel_attn = dec.block[0].layer[0].SelfAttention  # layer 0 owns the relative position bias
        self._bias_cache: dict = {}
        if dtype != torch.float32:
            self.cast(dtype)

    def cast(self, dtype: torch.dtype) -> "T5StepDecoder":
        """Every weight copy in `dtype` (float32 folds first, then rounds once)."""
        conv = lambda w: w.to(dtype) if torch.is_tensor(w) else w  # noqa: E731
        self.dtype = dtype
        self.embed, self.cross_kv, self.lm_head = conv(self.embed), conv(self.cross_kv), conv(self.lm_head)
        self.layers = [{k: conv(w) for k, w in layer.items()} for layer in self.layers]
        self._bias_cache = {}
        return self

    @property
    def device(self):
        return self.embed.device

    def position_bias(self, T: int) -> torch.Tensor:
        """(T, H, 1, T): row t is the self-attention bias of query position t over key positions (masked > t)."""
        if T not in self._bias_cache:
            with torch.no_grad():
                b = self.rel_attn.compute_bias(T, T, device=self.device)[0]  # (H, T, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=self.device).tril()
            b = b.masked_fill(~causal, NEG_INF)
            self._bias_cache[T] = b.permute(1, 0, 2).unsqueeze(2).contiguous().to(self.dtype)
        return self._bias_cache[T]

    def rms(self, x):
        """T5LayerNorm without its weight (folded into the next projection)."""
        return F.rms_norm(x, (self.d,), eps=self.eps)

    def prepare(self, queries):
        """Once per query batch: the encoder states (`model.encode`: prefix vectors, or a T5 encoder over
        query tokens) and every layer's cross-attention K/V, shared by the query's beams."""
        if hasattr(self.model, "encode"):
            enc, mask = self.model.encode(queries)
        else:  # a bare HF T5 given encoder states directly
            enc, mask = queries, None
        # (N, 1, 1, P) boolean "may attend", broadcast over heads and beam slots
        return self.cross_kv_of(enc.to(self.dtype)), None if mask is None else mask[:, None, None, :]

    def cross_kv_of(self, enc: torch.Tensor):
        """enc (N, P, d) -> per layer (K, V), each (N, H, P, d_kv); computed once per query."""
        N, P, _ = enc.shape
        kv = F.linear(enc, self.cross_kv).view(N, P, self.L, 2, self.H, self.dk)
        kv = kv.permute(2, 3, 0, 4, 1, 5).contiguous()  # (L, 2, N, H, P, dk)
        return [(kv[l, 0], kv[l, 1]) for l in range(self.L)]

    def new_cache(self, rows: int, T: int) -> KVCache:
        self.position_bias(T)  # built here, so a (compiled) step only looks it up
        return kv_cache(self.L, rows, T, self.H, self.dk, self.device, self.dtype)

    def step(self, tokens: torch.Tensor, t: int, N: int, S: int, state, cache: KVCache, T: int) -> torch.Tensor:
        """Logits (N*S, V) of the next token for N queries x S beam slots at position t (rows n*S + s)."""
        cross, cross_mask = state
        NS = N * S
        x = self.embed[tokens]
        bias = self.position_bias(T)[t, :, :, : t + 1]  # (H, 1, t+1)
        for layer, (kc, vc), (ks, vs) in zip(self.layers, cross, cache.layers):
            # self-attention over positions 0..t, keys/values of position t written into the cache
            qkv = F.linear(self.rms(x), layer["qkv"]).view(NS, 3, self.H, self.dk)
            ks[:NS, t] = qkv[:, 1]
            vs[:NS, t] = qkv[:, 2]
            att = self.attend_cache(qkv[:, 0], ks[:NS, : t + 1], vs[:NS, : t + 1], bias)  # (NS, H, dk)
            x = torch.addmm(x, att.reshape(NS, self.inner), layer["o_t"])
            # cross-attention: the S beams of a query are S query positions against its shared prefix K/V
            q = F.linear(self.rms(x), layer["cq"]).view(N, S, self.H, self.dk).transpose(1, 2)  # (N, H, S, dk)
            att = F.scaled_dot_product_attention(q, kc, vc, attn_mask=cross_mask, scale=1.0)  # (N, H, S, dk)
            x = torch.addmm(x, att.transpose(1, 2).reshape(NS, self.inner), layer["co_t"])
            # feed-forward (T5DenseGatedActDense / T5DenseActDense)
            g = F.linear(self.rms(x), layer["wi"])
            if self.gated:
                dff = layer["d_ff"]
                g = self.act(g[:, :dff]).mul_(g[:, dff:])
            else:
                g = self.act(g)
            x = torch.addmm(x, g, layer["wo_t"])
        # final layer norm (weight and T5's optional output scaling folded into lm_head)
        return F.linear(self.rms(x), self.lm_head)

    def attend_cache(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Self-attention of one query position over the cached positions 0..t (T5: no 1/sqrt(d_kv) scale).

        q (NS, H, dk); k, v (NS, t+1, H, dk), the cache's layout; bias (H, 1, t+1).  Returns (NS, H, dk).
        On a CPU, and in bf16: products in the cache's layout, scores and softmax in float32 -- a (1 x dk) @
        (dk x t+1) product per row and head is too small for a batched matmul, and the transposed cache sends CPU
        SDPA down its math path with copies of K and V, 3-9x slower than these two broadcast products on 960
        beam rows (issue #18).  fp32 on a GPU: `scaled_dot_product_attention`'s fused kernel (as before; the
        products were not timed there)."""
        if self.dtype == torch.float32 and q.device.type != "cpu":
            att = F.scaled_dot_product_attention(q.unsqueeze(2), k.transpose(1, 2), v.transpose(1, 2),
                                                 attn_mask=bias, scale=1.0)  # (NS, H, 1, dk)
            return att.squeeze(2)
        scores = (k * q.unsqueeze(1)).sum(-1, dtype=torch.float32)  # (NS, t+1, H)
        p = scores.add_(bias.squeeze(1).t()).softmax(1).to(v.dtype)
        return (p.unsqueeze(-1) * v).sum(1)  # (NS, H, dk)

    reorder = staticmethod(reorder_kv_cache)
