"""`StepDecoder`: what `genretr.decoding.engine` asks of a model, written once (issue #15).

A model takes part in the engine's search through ``model.step_decoder()`` (CART:
`genretr.backbones.cart.CartStepDecoder`, MLLMs: `genretr.backbones.mllm_step.MLLMStepDecoder`); a T5 model
without one is laid out by `genretr.backbones.t5_step.T5StepDecoder`.  The engine runs, for a batch of N queries,

    state = sd.prepare(queries)                       # once per batch: what a query's beams share
    cache = sd.new_cache(rows, T)                     # once per search, rows >= N * max beam slots
    for t in range(T):                                # S = beam slots at step t (fixed before the search)
        logits = sd.step(tokens, t, N, S, state, cache, T)
        ...constraint, top-k, finished set...
        sd.reorder(cache, rows, t + 1)

Shapes and meanings:

* ``queries``: a (N, d) tensor of query vectors or a dict of per-query tensors (``{"z", "src"}``), as the
  model's training batches; an MLLM's: a list of sample dicts.
* ``tokens`` (N * S,) long: the token each beam slot fed at position t (PAD at t = 0, the start token);
  row ``n * S + s`` is slot s of query n.  Dead slots carry PAD and are masked by the engine.
* ``step`` returns logits (N * S, vocab_size), any float dtype; the engine casts them to float32 before its
  log-softmax over the full vocabulary.  The step writes position t of every row of the cache.
* ``reorder(cache, rows, upto)``: new row i <- old row ``rows[i]`` for positions < upto.
* ``vocab_size``: tokens of the decoding space (the trie's); ``device``: where tensors must be.

Optional: ``cast(dtype) -> self`` runs the step in bf16 (``decoding.precision``, issue #18); ``compilable =
True`` when `torch.compile(fullgraph=True)` can trace `step` and `reorder` (fixed shapes given t, N, S).
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class StepDecoder(Protocol):
    vocab_size: int

    @property
    def device(self) -> torch.device: ...

    def prepare(self, queries: Any) -> Any: ...

    def new_cache(self, rows: int, T: int) -> Any: ...

    def step(self, tokens: torch.Tensor, t: int, N: int, S: int, state: Any, cache: Any, T: int) -> torch.Tensor: ...

    def reorder(self, cache: Any, rows: torch.Tensor, upto: int) -> None: ...


MEMBERS = ("vocab_size", "device", "prepare", "new_cache", "step", "reorder")  # StepDecoder's, in its order


def missing_members(sd) -> list[str]:
    """The members of `StepDecoder` that `sd` lacks (empty when it is one)."""
    return [] if isinstance(sd, StepDecoder) else [name for name in MEMBERS if not hasattr(sd, name)]
