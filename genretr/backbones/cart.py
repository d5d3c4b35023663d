"""`CartSeq2Seq`: CART's query-to-identifier transformer with coarse-to-fine fusion and R-Drop.

CART Sec. 3.4-3.5: a transformer encoder reads the query tokens, a decoder generates the semantic
identifier token by token (Eq. 6), each decoder layer fusing every encoder layer's output (coarse and
fine fusion, `genretr.backbones.cart_fusion`).  Training minimises the token cross-entropy plus
omega times the bidirectional KL divergence between two forward passes with independent dropout
(R-Drop, Eq. 7-8, omega = 0.15 in Appendix C); `rdrop_weight=0` is the paper's "w/o consistency loss"
ablation and `fusion=False` its "w/o fusion strategy" ablation (a plain encoder-decoder).
All parameters are Xavier-uniform initialised (Appendix C; biases zero).

`step_decoder()` lays the model out for `genretr.decoding.engine`: the encoder, Z and every decoder
layer's cross-attention / coarse / fine keys and values are computed once per query (`prepare`) and
shared by its beams, which attend as S query positions against that one query's keys; the
self-attention keys/values live in a preallocated double-buffered cache (`genretr.backbones.t5_step.KVCache`).
"""
from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from genretr.backbones.cart_fusion import DecoderLayer, EncoderLayer, sinusoid
from genretr.backbones.tied_source import embed_source, target_index
from genretr.errors import GenretrError
from genretr.identifiers.base import EOS, PAD
from genretr.training import log_heldout, lr_factor, stepping_batches

SRC_PAD = 0


def bidirectional_kl(logits_p: torch.Tensor, logits_q: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Eq. 7, sum_i P(i) log(P(i)/Q(i)) + Q(i) log(Q(i)/P(i)) = sum_i (P - Q)(log P - log Q), averaged over
    the target tokens where `keep` is True."""
    lp, lq = logits_p.log_softmax(-1), logits_q.log_softmax(-1)
    per_token = ((lp.exp() - lq.exp()) * (lp - lq)).sum(-1)
    return per_token[keep].mean()


class CartSeq2Seq(L.LightningModule):
    def __init__(self, vocab_size: int, src_vocab_size: int, input_dim: int | None = None, d_model: int = 256,
                 heads: int = 4, d_ff: int = 1024, dropout: float = 0.1, encoder_layers: int = 3,
                 decoder_layers: int = 3, max_src_len: int = 64, max_tgt_len: int = 32, fusion: bool = True,
                 rdrop_weight: float = 0.15, consistency: bool = True, lr: float = 1e-4, warmup_steps: int = 100,
                 weight_decay: float = 0.01, schedule: str = "constant", tied_src_tokens: list | None = None):
        super().__init__()
        # input_dim is accepted (the pipeline passes it) and not used; the tied words (one pair per identifier token)
        # are rebuilt by whoever builds the model, not stored with it
        self.save_hyperparameters(ignore=["tied_src_tokens"])
        # omega of Eq. 8; `consistency=False` (config `train.consistency=false`) is the "w/o consistency loss" ablation
        self.omega = float(rdrop_weight) if consistency else 0.0
        if encoder_layers < 1 or decoder_layers < 1:
            raise GenretrError(f"CART needs >= 1 encoder and decoder layer, got {encoder_layers}+{decoder_layers}")
        d = d_model
        self.scale = math.sqrt(d)
        self.src_embed = nn.Embedding(src_vocab_size, d, padding_idx=SRC_PAD)
        self.tgt_embed = nn.Embedding(vocab_size, d)  # PAD (0) is also the decoder start token: no padding_idx
        # describe's ID words read the decoder's embedding of their token (genretr.backbones.tied_source)
        self.register_buffer("src_targets", target_index(src_vocab_size, tied_src_tokens), persistent=False)
        self.register_buffer("src_pos", sinusoid(max_src_len, d), persistent=False)
        self.register_buffer("tgt_pos", sinusoid(max_tgt_len, d), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(EncoderLayer(d, heads, d_ff, dropout) for _ in range(encoder_layers))
        self.coarse_proj = nn.Linear(encoder_layers * d, d) if fusion else None  # Eq. 2: Z = W[E_1..E_S] + b
        self.decoder = nn.ModuleList(DecoderLayer(d, heads, d_ff, dropout, encoder_layers, fusion)
                                     for _ in range(decoder_layers))
        self.out = nn.Linear(d, vocab_size, bias=False)
        for name, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        with torch.no_grad():
            self.src_embed.weight[SRC_PAD].zero_()

    # -- encoder --------------------------------------------------------------------------------------------
    def encode(self, src: torch.Tensor):
        """src (N, L) query tokens, 0 = pad -> (E_1..E_S, Z or None, visibility mask (N, 1, 1, L')).
        Columns that are padding in every row are dropped (exact: padding is masked everywhere)."""
        if src.dim() != 2 or src.dtype not in (torch.int64, torch.int32):
            raise GenretrError(f"CART src must be a (N, L) integer tensor of query tokens, got {tuple(src.shape)} "
                               f"{src.dtype}")
        present = src != SRC_PAD
        if not bool(present.any(1).all()):
            raise GenretrError("CART src has a query with no tokens (a row of padding only): CART reads only words, "
                               "and a sample without text (an image query; a memorize sample of an image item) "
                               "has none")
        src = src[:, : int(present.any(0).nonzero().max()) + 1]
        if src.shape[1] > self.hparams.max_src_len:
            raise GenretrError(f"CART query of {src.shape[1]} tokens exceeds max_src_len={self.hparams.max_src_len}")
        if int(src.max()) >= self.hparams.src_vocab_size or int(src.min()) < 0:
            raise GenretrError(f"CART src token ids must lie in [0, {self.hparams.src_vocab_size})")
        mask = (src != SRC_PAD)[:, None, None, :]
        x = embed_source(self.src_embed, self.tgt_embed.weight, self.src_targets, src.long())
        x = self.drop(x * self.scale + self.src_pos[: src.shape[1]])
        layers = []
        for layer in self.encoder:
            x = layer(x, mask)
            layers.append(x)
        z = self.coarse_proj(torch.cat(layers, -1)) if self.coarse_proj is not None else None
        return layers, z, mask

    def memories(self, src: torch.Tensor):
        """Everything the decoder reads from the query, once per query: per-layer K/V and the masks."""
        layers, z, mask = self.encode(src)
        fine_mask = mask.repeat_interleave(len(layers), 0) if self.hparams.fusion else None
        return [layer.memory(layers, z) for layer in self.decoder], mask, fine_mask

    # -- teacher forcing ------------------------------------------------------------------------------------
    def embed_targets(self, tokens: torch.Tensor, positions: slice | int) -> torch.Tensor:
        return self.drop(self.tgt_embed(tokens) * self.scale + self.tgt_pos[positions])

    def logits(self, src: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next-token logits (N, T, V) for decoder inputs (start token PAD first)."""
        T = decoder_input_ids.shape[1]
        if T > self.hparams.max_tgt_len:
            raise GenretrError(f"a CART target of {T} tokens (an identifier, or a describe / rationale text) exceeds "
                               f"backbone.model.max_tgt_len={self.hparams.max_tgt_len}: raise it (to the longest target)")
        mems, mask, fine_mask = self.memories(src)
        x = self.embed_targets(decoder_input_ids, slice(0, T))
        for layer, mem in zip(self.decoder, mems):
            x = layer(x, mem, mask, fine_mask)
        return self.out(x)

    def loss_terms(self, src: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token cross-entropy, bidirectional KL of Eq. 7) for target identifiers `labels` (PAD after EOS).

        With R-Drop active (training, omega > 0) the batch runs twice in one forward pass with
        independent dropout; the cross-entropy is the mean of the two passes'.  Otherwise one pass, KL = 0."""
        if labels.dim() != 2 or labels.shape[0] != src.shape[0]:
            raise GenretrError(f"CART labels must be (N, T) with N = {src.shape[0]}, got {tuple(labels.shape)}")
        if int(labels.max()) >= self.hparams.vocab_size or int(labels.min()) < 0:
            raise GenretrError(f"CART label ids must lie in [0, {self.hparams.vocab_size})")
        start = torch.full_like(labels[:, :1], PAD)
        dec_in = torch.cat([start, labels[:, :-1]], 1)
        keep = labels != PAD
        rdrop = self.training and self.omega > 0
        logits = self.logits(src.repeat(2, 1) if rdrop else src, dec_in.repeat(2, 1) if rdrop else dec_in)
        ce = F.cross_entropy(logits.flatten(0, 1), labels.repeat(2 if rdrop else 1, 1).flatten(), ignore_index=PAD)
        if not rdrop:
            return ce, ce.new_zeros(())
        lp, lq = logits.chunk(2)
        return ce, bidirectional_kl(lp, lq, keep)

    def forward(self, src: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Eq. 8: cross-entropy + omega * L_KL (the KL term only while training with R-Drop)."""
        ce, kl = self.loss_terms(src, labels)
        return ce + self.omega * kl

    def training_step(self, batch, batch_idx=0):
        if not isinstance(batch, dict) or "src" not in batch or "labels" not in batch:
            raise GenretrError("CART training batches must be dicts with 'src' (query tokens) and 'labels'")
        ce, kl = self.loss_terms(batch["src"], batch["labels"])
        loss = ce + self.omega * kl
        n = len(batch["src"])
        self.log("decoder/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=n)
        if self.omega > 0:
            self.log("decoder/kl", kl, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def validation_step(self, batch, batch_idx=0):
        """Held-out training queries (`genretr.training.EarlyStop`): their targets' loss and exact match."""
        labels = batch["labels"]
        start = torch.full_like(labels[:, :1], PAD)
        log_heldout(self, self.logits(batch["src"], torch.cat([start, labels[:, :-1]], 1)), labels, PAD)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        # linear warm-up, then constant (genretr's default) or a cosine decay (Sec. 4's cosine annealing, one cycle)
        factor = lr_factor(self.hparams.schedule, self.hparams.warmup_steps, stepping_batches(self.trainer))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @torch.no_grad()
    def sequence_logprob(self, src: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        """Summed log-probability of each sequence (N, T) up to and including its first EOS (teacher forcing)."""
        start = torch.full_like(seqs[:, :1], PAD)
        lp = self.logits(src, torch.cat([start, seqs[:, :-1]], 1)).log_softmax(-1)
        lp = lp.gather(-1, seqs.unsqueeze(-1)).squeeze(-1)
        ends = (seqs == EOS).long()
        return (lp * (ends.cumsum(1) - ends == 0)).sum(1)

    def step_decoder(self) -> "CartStepDecoder":
        return CartStepDecoder(self)


class CartStepDecoder:
    """The `genretr.decoding.protocol.StepDecoder` of a `CartSeq2Seq` (inference: call on an eval model).

    Self-attention keys/values live in a double-buffered `KVCache` (rows, T, heads, d_k).  `cast(torch.bfloat16)`
    runs the step on a bf16 twin of the model (weights, encoder memories and cache in bf16; issue #18)."""

    compilable = True

    def __init__(self, model: CartSeq2Seq):
        self.model = model
        self.vocab_size = model.hparams.vocab_size
        first = model.decoder[0].self_attn
        self.heads, self.dk = first.heads, first.dk
        self.dtype = next(model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return self.model.out.weight.device

    def cast(self, dtype: torch.dtype) -> "CartStepDecoder":
        """Step on a copy of the model in `dtype` (rebuilt from its hyperparameters and weights, so a trainer
        attached to the model is not copied).  Built on the meta device, so no initialisation runs (that was
        ~0.1 s of random draws per search on the benchmark's decoder), then filled with the model's tensors."""
        if dtype != self.dtype:
            with torch.device("meta"):
                twin = type(self.model)(**dict(self.model.hparams))
            twin = twin.to_empty(device=self.device)
            twin.load_state_dict(self.model.state_dict())
            with torch.no_grad():  # non-persistent buffers (positional encodings, tied query words) are not in
                mine = dict(twin.named_buffers())  # the state dict; the tied words not in the hyperparameters
                for name, theirs in self.model.named_buffers():
                    if name in mine:
                        mine[name].copy_(theirs)
                    else:  # None in a twin built without `tied_src_tokens`
                        owner, _, leaf = name.rpartition(".")
                        twin.get_submodule(owner).register_buffer(leaf, theirs.clone(), persistent=False)
            self.model = twin.to(dtype=dtype).eval()
            self.dtype = dtype
        return self

    @torch.no_grad()
    def prepare(self, queries):
        """Encoder, Z and all decoder layers' encoder-side K/V of a query batch (N, L), shared by its beams."""
        src = queries["src"] if isinstance(queries, dict) else queries
        return self.model.memories(torch.as_tensor(src, device=self.device))

    def new_cache(self, rows: int, T: int):
        from genretr.backbones.t5_step import kv_cache

        if T > self.model.hparams.max_tgt_len:
            raise GenretrError(f"identifiers of {T} tokens exceed CART's backbone.model.max_tgt_len="
                               f"{self.model.hparams.max_tgt_len}: raise it to at least {T}")
        return kv_cache(len(self.model.decoder), rows, T, self.heads, self.dk, self.device, self.dtype)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, t: int, N: int, S: int, state, cache, T: int) -> torch.Tensor:
        """Logits (N*S, V) at position t for N queries x S beam slots (rows n*S + s)."""
        mems, mask, fine_mask = state
        NS = N * S
        x = self.model.embed_targets(tokens, t).unsqueeze(1)  # (NS, 1, d)
        for layer, mem, (ks, vs) in zip(self.model.decoder, mems, cache.layers):
            a = layer.self_attn
            ks[:NS, t] = a.split(x, a.k)[:, :, 0]  # (NS, H, dk)
            vs[:NS, t] = a.split(x, a.v)[:, :, 0]
            k, v = ks[:NS, : t + 1].transpose(1, 2), vs[:NS, : t + 1].transpose(1, 2)  # (NS, H, t+1, dk)
            y = layer.norm1(x + a.attend(a.split(x, a.q), k, v))
            # the S beams of a query are S query positions against that query's shared keys/values
            h = layer.attend_memory(y.view(N, S, -1), mem, mask, fine_mask)
            x = layer.feed_forward(h).view(NS, 1, -1)
        return self.model.out(x.squeeze(1))

    @staticmethod
    def reorder(cache, rows: torch.Tensor, upto: int) -> None:
        """New row i <- old row rows[i], positions < upto (`KVCache.reorder`: index_select into the other buffer)."""
        cache.reorder(rows, upto)
