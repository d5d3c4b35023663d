"""`MLLMStepDecoder`: an `MLLMRetriever` laid out for `genretr.decoding.engine` (the StepDecoder protocol of
`genretr.decoding.protocol`): each query's prompt runs once, then one HF forward per generated token over an HF
cache reordered by beam (`genretr.backbones.mllm` says how decoding ids map to the LLM's)."""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch


@dataclass
class PromptState:
    """What a query's beams share: the prompt's last logits (N, V), its KV cache, mask and next position."""

    logits: torch.Tensor
    cache: object
    mask: torch.Tensor
    next_pos: torch.Tensor
    extras: dict


def cache_argument(hf) -> str:
    """The name under which `hf.forward` takes a KV cache: ``cache`` since transformers renamed
    ``past_key_values`` (the old name warns, and goes in 5.40), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"


def returned_cache(out) -> object:
    """The KV cache in an HF forward's output, under either name (see `cache_argument`)."""
    return out["cache"] if "cache" in out.keys() else out["past_key_values"]


class BeamCache:
    """The beams' KV cache (prompt + generated), set from the prompt's at step 0."""

    def __init__(self):
        self.kv = None


class MLLMStepDecoder:
    """The `genretr.decoding.protocol.StepDecoder` of an `MLLMRetriever` (rows n*S + s).

    `cast(torch.bfloat16)` (the engine's ``step_dtype="bfloat16"``, issue #18) runs the prompt and every step
    under `torch.autocast` in bf16 (the HF cache then holds bf16 keys/values); the weights stay in the
    model's own dtype (``backbone.dtype``) and the logits are returned in float32 either way.  Not
    compilable (`compilable = False`): HF's dynamic cache grows every step."""

    compilable = False

    def __init__(self, model):  # a genretr.backbones.mllm.MLLMRetriever
        self.model = model
        self.cache_arg = cache_argument(model.hf)
        self.device = next(model.parameters()).device
        self.vocab_size = model.decoding_vocab_size
        self.autocast: torch.dtype | None = None

    def cast(self, dtype: torch.dtype) -> "MLLMStepDecoder":
        self.autocast = None if dtype == torch.float32 else dtype
        return self

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                              enabled=self.autocast is not None)

    def prepare(self, queries: list[dict]) -> PromptState:
        m = self.model
        batch = {k: v.to(self.device) for k, v in m.batch(list(queries), False).items()}
        with self._autocast():
            out = m.hf(**m.model_inputs(batch), use_cache=True, logits_to_keep=1)
        return PromptState(out.logits[:, -1].float(), returned_cache(out), batch["attention_mask"],
                           m.next_positions(batch), m.step_extras(batch, out))

    def new_cache(self, rows: int, T: int) -> BeamCache:
        return BeamCache()

    def llm_step(self, llm_tokens: torch.Tensor, t: int, N: int, S: int, state: PromptState,
                 cache: BeamCache) -> torch.Tensor:
        """LLM logits (N*S, V) after feeding `llm_tokens` as generated token t (t >= 1)."""
        q = torch.arange(N, device=self.device).repeat_interleave(S)
        mask = torch.cat([state.mask[q], state.mask.new_ones(N * S, t)], 1)
        pos = self.model.step_positions(state.next_pos[q] + (t - 1))
        extras = self.model.step_inputs({k: v[q] for k, v in state.extras.items()})
        with self._autocast():
            out = self.model.hf(input_ids=llm_tokens[:, None], attention_mask=mask, position_ids=pos,
                                use_cache=True, **{self.cache_arg: cache.kv}, **extras)
        cache.kv = returned_cache(out)
        return out.logits[:, -1].float()

    def step(self, tokens: torch.Tensor, t: int, N: int, S: int, state: PromptState, cache: BeamCache,
             T: int) -> torch.Tensor:
        if t == 0:  # the prompt's last position predicts the first identifier token
            cache.kv = state.cache
            return self.model.to_decoding(state.logits)
        return self.model.to_decoding(self.llm_step(self.model.to_llm(tokens), t, N, S, state, cache))

    def reorder(self, cache: BeamCache, rows: torch.Tensor, upto: int) -> None:
        cache.kv.reorder_cache(rows.to(self.device))
