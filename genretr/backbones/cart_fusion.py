"""CART's transformer layers: the query encoder and the decoder layer with coarse-to-fine fusion.

CART Sec. 3.4: the encoder has S layers with outputs E(q) = (E_1, ..., E_S).  Every decoder layer
self-attends, cross-attends to the last encoder layer E_S (the standard encoder-decoder attention),
and adds the two fusion branches:

* coarse (Sec. 3.4.1, Eq. 2-3): Z = W [E_1, ..., E_S] + b (one projection of the concatenated layer
  outputs, shared by all decoder layers); G(Y, Z) = sigmoid(C(Y, Z)) / S with C a multi-head
  cross-attention with its own W_q, W_k, W_v (and output projection);
* fine (Sec. 3.4.2, Eq. 4-5): L(Y, E(q)) = sum_i alpha_i * C(Y, E_i), with
  alpha_i = sigmoid(W_i [Y, C(Y, E_i)] + b), an element-wise gate per encoder layer i.

Choices where the paper is silent or ambiguous (stated here once):

* layers are post-LN ("standard" Transformer, as the meshed-memory decoder CART cites); dropout acts on
  the embeddings and on every residual branch, not on the attention probabilities;
* Y is the output of the decoder layer's self-attention sublayer (the query of every cross-attention);
* the fine branch uses one cross-attention C shared by the S encoder layers (Eq. 4 writes a single C;
  only the gate weights W_i carry an index, as in the meshed-memory transformer); the gate bias b is
  shared by the S gates, as written in Eq. 5;
* "we add the coarse feature and fine feature as input to the next decoder layer": G + L is added as an
  extra residual branch beside the standard cross-attention, y + CrossAttn(y, E_S) + G + L, before that
  sublayer's LayerNorm; the feed-forward sublayer follows.

Every cross-attention masks the query's padding tokens.  Keys and values of the encoder side are
computed once per query (`DecoderLayer.memory`) and shared by every target position (teacher forcing)
or every beam (step decoding), which is why the attention is split into projections and `attend`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoid(length: int, d: int) -> torch.Tensor:
    """Vaswani et al. (2017) positional encoding, (length, d)."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(length, d)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return pe


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                   causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_k)) v as plain matmuls, the softmax in fp32; what `F.scaled_dot_product_attention`
    computes (a fully masked row gives 0 as it does).  For bf16 on a CPU: there torch's fused attention
    backward ran ~12x slower than in fp32 (CART trained at 0.78x its fp32 speed under bf16 autocast,
    `python -m genretr.bench training`), while these short sequences' matmuls use the bf16 units."""
    s = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5  # (N, H, Tq, L)
    visible = mask
    if causal:  # as SDPA's is_causal: query i sees keys 0..i
        tri = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        visible = tri if visible is None else visible & tri
    if visible is not None:
        s = s.masked_fill(~visible, torch.finfo(s.dtype).min)
    p = s.softmax(-1)
    if visible is not None:
        p = p * visible.any(-1, keepdim=True)  # rows that see nothing: 0, not a uniform average
    return p.to(v.dtype) @ v


class Attention(nn.Module):
    """Multi-head scaled dot-product attention, Attention(W_q Y, W_k M, W_v M) followed by W_o."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        if d % heads:
            raise ValueError(f"d_model={d} is not divisible by heads={heads}")
        self.heads, self.dk = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def split(self, x: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
        """(N, T, d) -> projected (N, H, T, dk)."""
        N, T, _ = x.shape
        return proj(x).view(N, T, self.heads, self.dk).transpose(1, 2)

    def kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(memory, self.k), self.split(memory, self.v)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
               causal: bool = False) -> torch.Tensor:
        """Heads q (N, H, Tq, dk) over k, v (N, H, L, dk); mask (N, 1, 1, L) True = visible -> (N, Tq, d)."""
        if q.dtype == torch.bfloat16 and q.device.type == "cpu":
            out = math_attention(q, k, v, mask, causal)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        N, _, Tq, _ = out.shape
        return self.o(out.transpose(1, 2).reshape(N, Tq, self.heads * self.dk))

    def forward(self, y: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask=None) -> torch.Tensor:
        return self.attend(self.split(y, self.q), *kv, mask)


def feed_forward(d: int, d_ff: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d_ff), nn.ReLU(), nn.Linear(d_ff, d))


class EncoderLayer(nn.Module):
    """Post-LN self-attention + feed-forward over the query tokens; its output is one E_i."""

    def __init__(self, d: int, heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.attn, self.ff = Attention(d, heads), feed_forward(d, d_ff)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x, self.attn.kv(x), mask)))
        return self.norm2(x + self.drop(self.ff(x)))


class DecoderLayer(nn.Module):
    """Self-attention, cross-attention to E_S plus (with `fusion`) coarse and fine fusion, feed-forward."""

    def __init__(self, d: int, heads: int, d_ff: int, dropout: float, encoder_layers: int, fusion: bool):
        super().__init__()
        self.S, self.fusion = encoder_layers, fusion
        self.self_attn, self.cross, self.ff = Attention(d, heads), Attention(d, heads), feed_forward(d, d_ff)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        if fusion:
            self.coarse = Attention(d, heads)  # Eq. 3: C(Y, Z)
            self.fine = Attention(d, heads)  # Eq. 4: C(Y, E_i), shared by i = 1..S
            self.gate = nn.ModuleList(nn.Linear(2 * d, d, bias=False) for _ in range(encoder_layers))  # Eq. 5: W_i
            self.gate_bias = nn.Parameter(torch.zeros(d))  # Eq. 5: b

    def memory(self, layers: list[torch.Tensor], z: torch.Tensor | None) -> dict:
        """Keys/values of the encoder side, once per query: E_S; with fusion also Z and every E_i.
        The fine branch's S encoder layers are folded into the batch: row n * S + i is (query n, E_i)."""
        mem = {"cross": self.cross.kv(layers[-1])}
        if self.fusion:
            mem["coarse"] = self.coarse.kv(z)
            mem["fine"] = self.fine.kv(torch.stack(layers, 1).flatten(0, 1))
        return mem

    def attend_memory(self, y: torch.Tensor, mem: dict, mask: torch.Tensor, fine_mask: torch.Tensor | None):
        """Second sublayer for queries y (N, Tq, d) of N source queries: LN(y + C(y, E_S) [+ G + L])."""
        h = self.cross(y, mem["cross"], mask)
        if self.fusion:
            N, Tq, d = y.shape
            g = torch.sigmoid(self.coarse(y, mem["coarse"], mask)) / self.S  # Eq. 3
            q = self.fine.split(y, self.fine.q).repeat_interleave(self.S, 0)  # (N*S, H, Tq, dk): one q per E_i
            c = self.fine.attend(q, *mem["fine"], fine_mask).view(N, self.S, Tq, d)  # C(Y, E_i)
            fine = 0
            for i, w in enumerate(self.gate):
                alpha = torch.sigmoid(w(torch.cat([y, c[:, i]], -1)) + self.gate_bias)  # Eq. 5
                fine = fine + alpha * c[:, i]  # Eq. 4
            h = h + g + fine
        return self.norm2(y + self.drop(h))

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm3(x + self.drop(self.ff(x)))

    def forward(self, x: torch.Tensor, mem: dict, mask: torch.Tensor, fine_mask: torch.Tensor | None):
        """Teacher forcing: x (N, T, d) target positions, causal self-attention."""
        a = self.self_attn
        y = self.norm1(x + self.drop(a.attend(a.split(x, a.q), *a.kv(x), causal=True)))
        return self.feed_forward(self.attend_memory(y, mem, mask, fine_mask))
