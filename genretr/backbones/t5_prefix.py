"""`T5PrefixDecoder`: a T5 decoder conditioned on a query vector, randomly initialised (as GENIUS Sec. 5.1 does
its T5-small) or, ``pretrained=DIR``, with a T5 checkpoint's shape and blocks, its token rows new: identifiers
are not T5's words.

GENIUS Sec. 4.3.1, Eq. 9–10: an MLP maps the query embedding z_q to N prefix vectors,
P(z_q) = Reshape(MLP(z_q)) ∈ R^{N×d'}, which the decoder reads through cross-attention
(they stand where a T5 encoder's output would); the loss is the cross-entropy of the
target identifier.  With `query_mix_alpha > 0` each training query vector is replaced by an
interpolation towards its target's vector (GENIUS Sec. 4.3.2, Eq. 11 as written, `query_mix="paper"`: z' = mu z_q
+ (1 - mu) z_c, one mu ~ Beta(alpha, alpha) per sample; `query_mix="authors_code"`: as the authors' code, mu drawn
per dimension and z' = sqrt(mu) z_q + sqrt(1 - mu) z_c).  The T5 encoder is built with zero layers and its unused
final norm frozen, so every trained parameter is used (DDP needs that); the token embeddings stay shared and trained.

With `input="tokens"` (GRACE Sec. 3.4 on T5, DSI-style) a T5 encoder of `encoder_layers` layers (a checkpoint's own
under ``pretrained``) reads
the query as tokens (`src`, its own vocabulary); samples without text (memorize: an image) enter that
encoder as their prefix vectors instead.  Queries are a Tensor of vectors (prefix mode) or a dict
``{"z": vectors, "src": token ids}``; `encode(queries)` gives what the decoder cross-attends to.

Decoding here is HF `generate` with a trie-constrained `prefix_allowed_tokens_fn`
(genretr.decoding.hf); `length_penalty=0` ranks beams by the summed log-probability of
the identifier, as GENIUS Sec. 4.4.
"""
from __future__ import annotations

import logging
import os

import lightning as L
import torch
from torch import nn
from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import logging as hf_logging

from genretr.backbones.tied_source import embed_source, target_index
from genretr.errors import MissingWeightsError
from genretr.identifiers.base import EOS, PAD
from genretr.training import log_heldout, lr_factor, stepping_batches
from genretr.weights import CheckpointNotFound, load_error_cause, local_checkpoint


log = logging.getLogger(__name__)
TOKEN_ROWS = ("shared.", "encoder.embed_tokens.", "decoder.embed_tokens.", "lm_head.")  # new rows: not T5's words
QUERY_MIXES = ("paper", "authors_code")  # GENIUS Eq. 11 as written | as the authors' code draws it


def generation_cache():
    """An empty cache for HF `generate` whose layers are created as the decoder writes them.

    HF builds its default cache from ``config.num_layers`` -- the *encoder* depth of a T5 config -- so a
    token-input decoder with more decoder than encoder layers (or any depth differing from the prefix
    mode's 0) would index past its cache (IndexError in `DynamicCache.update`)."""
    from transformers import DynamicCache, EncoderDecoderCache

    return EncoderDecoderCache(DynamicCache(), DynamicCache())


def pretrained_t5_config(path: str) -> T5Config:
    """The config of a T5 checkpoint written by `save_pretrained`, from a local directory or the HF cache, never
    downloaded; a missing one is one `MissingWeightsError`."""
    try:
        return T5Config.from_pretrained(os.path.expanduser(str(path)), local_files_only=True)
    except (OSError, ValueError) as e:
        raise missing_checkpoint(path, e) from None


def missing_checkpoint(path: str, e: Exception) -> MissingWeightsError:
    cause = load_error_cause(e)
    return MissingWeightsError(
        f"backbone.model.pretrained={path}: no T5 checkpoint there (not a checkpoint directory, not in the HF "
        f"cache: {cause}). Fetch one where there is network, e.g. `huggingface-cli download t5-small "
        f"--local-dir DIR`, and set backbone.model.pretrained=DIR")


def load_pretrained_t5(path: str, config: T5Config, checkpoint_vocab: int) -> T5ForConditionalGeneration:
    """A T5 of `config` (the identifiers' vocabulary, its own encoder depth) holding every weight of the checkpoint
    at `path` of the same name and shape, loaded straight into it (one copy in memory), except the token
    embeddings and the LM head: the identifiers' tokens are new rows, drawn as T5 draws them.  The checkpoint loads
    at its own vocabulary (`checkpoint_vocab`), so that its rows, with or without an LM head of their own (t5-v1_1,
    flan-t5), load as transformers expects; they are then replaced."""
    loading = T5Config.from_dict({**config.to_dict(), "vocab_size": checkpoint_vocab})
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the report of the encoder blocks a prefix decoder leaves out: expected
    try:
        model, info = T5ForConditionalGeneration.from_pretrained(
            os.path.expanduser(str(path)), config=loading, local_files_only=True, ignore_mismatched_sizes=True,
            dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise missing_checkpoint(path, e) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    left = set(info["missing_keys"]) | {k[0] for k in info["mismatched_keys"]}
    blocks = [k for k in model.state_dict() if k.startswith("decoder.block.")]
    if all(k in left for k in blocks):
        raise MissingWeightsError(f"backbone.model.pretrained={path}: none of its weights is a T5 decoder block "
                                  "of the shape its config gives; is it a T5 checkpoint?")
    taken = sum(k not in left and not k.startswith(TOKEN_ROWS) for k in model.state_dict())
    rows = nn.Embedding(config.vocab_size, config.d_model)
    nn.init.normal_(rows.weight, std=config.initializer_factor)
    model.set_input_embeddings(rows)  # shared and both stacks' embed_tokens
    model.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
    model.lm_head.weight = rows.weight  # tied, as transformers 5 ties every T5's
    model.config.vocab_size = config.vocab_size
    model.generation_config = GenerationConfig.from_model_config(config)  # our PAD / EOS, not the checkpoint's
    log.info("backbone.model.pretrained=%s: %d of %d tensors from the checkpoint, the token rows new", path, taken,
             len(model.state_dict()))
    return model.train()


class PrefixMLP(nn.Module):
    """Eq. 9: z_q → N × d' prefix embeddings."""

    def __init__(self, input_dim: int, d_model: int, prefix_len: int, hidden: int = 1024):
        super().__init__()
        self.prefix_len, self.d_model = prefix_len, d_model
        self.net = nn.Sequential(nn.Linear(input_dim, hidden), nn.GELU(), nn.Linear(hidden, prefix_len * d_model))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # Encoder vectors are unit-norm (entries ~ d^-1/2): rescale to unit variance so that the final
        # LayerNorm sees activations well above its eps.
        z = z * z.shape[-1] ** 0.5
        return self.norm(self.net(z).view(len(z), self.prefix_len, self.d_model))


class T5PrefixDecoder(L.LightningModule):
    @classmethod
    def check_weights(cls, pretrained: str) -> None:
        """Raise `MissingWeightsError` unless `pretrained` is a T5 checkpoint on this machine (before any stage
        runs: `genretr.pipeline.Pipeline.check_weights`)."""
        try:
            local_checkpoint(pretrained)
        except CheckpointNotFound as e:
            raise missing_checkpoint(pretrained, e) from None
        pretrained_t5_config(pretrained)

    def __init__(self, vocab_size: int, input_dim: int, d_model: int = 256, num_layers: int = 2, num_heads: int = 4,
                 d_ff: int = 1024, dropout: float = 0.1, prefix_len: int = 8, prefix_hidden: int = 1024,
                 lr: float = 1e-3, weight_decay: float = 0.01, warmup_steps: int = 100, schedule: str = "constant",
                 query_mix_alpha: float = 0.0, query_mix: str = "paper",
                 tie_embeddings: bool = True, input: str = "prefix", encoder_layers: int = 2,
                 src_vocab_size: int | None = None, tied_src_tokens: list | None = None, pretrained: str | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["tied_src_tokens"])  # rebuilt by the builder (one pair per ID token)
        if query_mix not in QUERY_MIXES:
            raise ValueError(f"backbone.model.query_mix={query_mix} is not one of {', '.join(QUERY_MIXES)}")
        if input not in ("prefix", "tokens"):
            raise ValueError(f"backbone.model.input={input} is not one of prefix, tokens")
        if input == "tokens" and not src_vocab_size:
            raise ValueError("backbone.model.input=tokens needs src_vocab_size (the query tokenizer's vocabulary)")
        self.tokens_input = input == "tokens"
        checkpoint = pretrained_t5_config(pretrained) if pretrained else None
        if checkpoint is None:  # the shape the config gives
            shape = dict(d_model=d_model, d_kv=d_model // num_heads, d_ff=d_ff, num_decoder_layers=num_layers,
                         num_heads=num_heads, feed_forward_proj="gated-gelu",
                         num_layers=encoder_layers if self.tokens_input else 0)
        else:  # the checkpoint's shape (d_model, num_layers, ... of the config are not read)
            c = checkpoint
            shape = dict(d_model=c.d_model, d_kv=c.d_kv, d_ff=c.d_ff, num_decoder_layers=c.num_decoder_layers,
                         num_heads=c.num_heads, feed_forward_proj=c.feed_forward_proj,
                         relative_attention_num_buckets=c.relative_attention_num_buckets,
                         relative_attention_max_distance=c.relative_attention_max_distance,
                         layer_norm_epsilon=c.layer_norm_epsilon, num_layers=c.num_layers if self.tokens_input else 0)
            d_model = c.d_model
        config = T5Config(vocab_size=vocab_size, dropout_rate=dropout, tie_word_embeddings=tie_embeddings,
                          pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, **shape)
        self.t5 = (T5ForConditionalGeneration(config) if checkpoint is None
                   else load_pretrained_t5(pretrained, config, checkpoint.vocab_size))
        if self.tokens_input:
            self.src_embed = nn.Embedding(src_vocab_size, d_model, padding_idx=PAD)
            nn.init.normal_(self.src_embed.weight, std=1.0)  # T5's embedding scale (no sqrt(d) multiplier)
            # describe's ID words read the decoder's rows of their token (`id_rows`, genretr.backbones.tied_source)
            self.register_buffer("src_targets", target_index(src_vocab_size, tied_src_tokens), persistent=False)
        else:
            self.t5.encoder.final_layer_norm.requires_grad_(False)  # unused (the encoder has no layers)
        if not tie_embeddings:
            # no d^-0.5 scaling of the decoder's output, and the head drawn at std d^-0.5 (N(0, 1) gives logits of std
            # ~sqrt(d), which stall training); transformers 5 ties T5's head to the token embeddings whatever the
            # config says, so this draws them too: the head is not a layer of its own (the golden record holds it)
            nn.init.normal_(self.t5.lm_head.weight, std=d_model**-0.5)
        self.prefix = PrefixMLP(input_dim, d_model, prefix_len, prefix_hidden)

    def encode(self, queries) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(states (N, P, d) the decoder cross-attends to, their mask (N, P) bool or None)."""
        z = queries["z"] if isinstance(queries, dict) else queries
        prefix = self.prefix(z)
        if not self.tokens_input:
            return prefix, None
        src = queries["src"]
        has_text = (src != PAD).any(1)
        # a sample with text is read from its tokens; one without (an image) from its prefix vectors
        mask = torch.cat([(~has_text)[:, None].expand(-1, prefix.shape[1]), src != PAD], 1)
        x = torch.cat([prefix, embed_source(self.src_embed, self.id_rows(), self.src_targets, src)], 1)
        states = self.t5.encoder(inputs_embeds=x, attention_mask=mask.long()).last_hidden_state
        return states, mask

    def id_rows(self) -> torch.Tensor:
        """The rows describe's ID words read (`genretr.backbones.tied_source`): the output layer's, which the targets
        train (the token embeddings too: transformers 5 ties every T5's)."""
        return self.t5.lm_head.weight

    def encoder_outputs(self, queries) -> BaseModelOutput:
        return BaseModelOutput(last_hidden_state=self.encode(queries)[0])

    def _t5(self, queries, **kw):
        states, mask = self.encode(queries)
        return self.t5(encoder_outputs=BaseModelOutput(last_hidden_state=states),
                       attention_mask=None if mask is None else mask.long(), **kw)

    def forward(self, queries, labels: torch.Tensor) -> torch.Tensor:
        """Mean token cross-entropy of `labels` (PAD positions ignored)."""
        labels = labels.masked_fill(labels == PAD, -100)
        return self._t5(queries, labels=labels).loss

    def training_step(self, batch, batch_idx):
        z, labels = batch["z"], batch["labels"]
        if self.hparams.query_mix_alpha > 0:
            z = self.mix_queries(z, batch["target_z"])
        loss = self({**batch, "z": z} if self.tokens_input else z, labels)
        self.log("decoder/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(z))
        return loss

    def mix_queries(self, zq: torch.Tensor, zc: torch.Tensor) -> torch.Tensor:
        """GENIUS Eq. 11, mu ~ Beta(alpha, alpha): z' = mu z_q + (1 - mu) z_c, one mu per sample (the paper), or
        sqrt(mu) z_q + sqrt(1 - mu) z_c with mu per dimension (the authors' code)."""
        a = torch.tensor(float(self.hparams.query_mix_alpha), device=zq.device)
        if self.hparams.get("query_mix", "paper") == "authors_code":
            mu = torch.distributions.Beta(a, a).sample(zq.shape)
            return mu.sqrt() * zq + (1 - mu).sqrt() * zc
        mu = torch.distributions.Beta(a, a).sample((len(zq), 1))
        return mu * zq + (1 - mu) * zc

    def validation_step(self, batch, batch_idx=0):
        """Held-out training queries (`genretr.training.EarlyStop`): their targets' loss and exact match."""
        labels = batch["labels"]
        out = self._t5(batch if self.tokens_input else batch["z"], labels=labels.masked_fill(labels == PAD, -100))
        log_heldout(self, out.logits, labels, PAD, loss=out.loss)

    def configure_optimizers(self):
        opt = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)
        factor = lr_factor(self.hparams.schedule, self.hparams.warmup_steps, stepping_batches(self.trainer))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @torch.no_grad()
    def generate(self, z, num_beams: int, max_new_tokens: int, prefix_allowed_tokens_fn=None,
                 num_return_sequences: int | None = None, length_penalty: float = 0.0, logits_processor=None):
        """HF beam search; returns (sequences without the start token, scores)."""
        extra = {} if logits_processor is None else {"logits_processor": logits_processor}
        states, mask = self.encode(z)
        out = self.t5.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states),
                               cache=generation_cache(),
                               attention_mask=None if mask is None else mask.long(), num_beams=num_beams,
                               num_return_sequences=num_return_sequences or num_beams,
                               max_new_tokens=max_new_tokens, prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
                               length_penalty=length_penalty, early_stopping=True, do_sample=False,
                               output_scores=True, return_dict_in_generate=True, **extra)
        seqs = out.sequences[:, 1:]
        if getattr(out, "sequences_scores", None) is not None:
            return seqs, out.sequences_scores
        n = len(z["z"]) if isinstance(z, dict) else len(z)
        rep = len(seqs) // n
        z = {k: v.repeat_interleave(rep, 0) for k, v in z.items()} if isinstance(z, dict) else z.repeat_interleave(rep, 0)
        return seqs, self.sequence_logprob(z, seqs)  # greedy: no scores

    @torch.no_grad()
    def sequence_logprob(self, z, seqs: torch.Tensor) -> torch.Tensor:
        """Summed log-probability of each sequence up to and including its first EOS (teacher forcing)."""
        start = torch.full((len(seqs), 1), PAD, dtype=seqs.dtype, device=seqs.device)
        logits = self._t5(z, decoder_input_ids=torch.cat([start, seqs[:, :-1]], 1)).logits
        lp = logits.log_softmax(-1).gather(-1, seqs.unsqueeze(-1)).squeeze(-1)
        keep = (seqs == EOS).long().cumsum(1) - (seqs == EOS).long() == 0  # positions up to the first EOS
        return (lp * keep).sum(1)
