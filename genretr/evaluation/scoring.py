"""Scores of given items for one query, as the searches rank them (what `results.html` and `genretr.search`
show beside each retrieved item):

* generative runs: log p(identifier | query) under the trained decoder, teacher-forced through its
  `StepDecoder` -- the full-vocabulary log-softmax summed over the identifier's tokens (EOS included) and
  divided by n ** length_penalty, which is the score the constrained beam search gives a finished beam
  (`genretr.decoding.engine`); the classifier head's: its first token's log p, which orders as its logits;
* the embedding baseline and GENIUS_R: the cosine of the query and item vectors (what they rank by).
"""
from __future__ import annotations

import numpy as np
import torch

from genretr.decoding import queries as Q
from genretr.identifiers.base import PAD


@torch.no_grad()
def identifier_scores(model, query, sequences: np.ndarray, length_penalty: float = 0.0,
                      step_dtype="float32", step_decoder=None) -> list[float]:
    """Beam-search scores of `sequences` (S, L), PAD-padded rows that end in EOS, for one query (`query`: a
    batch of one in the decoder's query format).  `step_decoder`: the model's, built once by a caller that
    scores several queries (its construction folds or copies the weights)."""
    from genretr.decoding.engine import step_decoder_of

    if Q.count(query) != 1:
        raise ValueError(f"identifier_scores takes one query, not {Q.count(query)}")
    if len(sequences) == 0:
        return []
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    try:
        sd = step_decoder if step_decoder is not None else step_decoder_of(model, step_dtype)
        return _scores(sd, query, sequences, length_penalty)
    finally:
        if was_training:
            model.train()


def _scores(sd, query, sequences, length_penalty: float) -> list[float]:
    seqs = torch.as_tensor(np.asarray(sequences), dtype=torch.long, device=sd.device)  # (S, L)
    S, T = seqs.shape
    lengths = (seqs != PAD).sum(1)  # EOS included; identifiers never contain PAD
    state, cache = sd.prepare(Q.to_device(query, sd.device)), sd.new_cache(S, T)
    # t = 0 as the engine runs it: one slot (the start token), its cache row then copied to every sequence's slot
    first = torch.log_softmax(sd.step(torch.full((1,), PAD, dtype=torch.long, device=sd.device), 0, 1, 1, state,
                                      cache, T).float(), dim=-1)  # (1, vocab)
    sd.reorder(cache, torch.zeros(S, dtype=torch.long, device=sd.device), 1)
    total = first[0, seqs[:, 0]]
    for t in range(1, T):
        logp = torch.log_softmax(sd.step(seqs[:, t - 1], t, 1, S, state, cache, T).float(), dim=-1)  # (S, vocab)
        live = t < lengths
        total += torch.where(live, logp.gather(1, seqs[:, t:t + 1]).squeeze(1), torch.zeros_like(total))
    return (total / lengths.float().pow(length_penalty)).tolist()


def cosine_scores(query_vec: torch.Tensor, item_vecs: torch.Tensor) -> list[float]:
    """Cosine of one query vector (d,) with each item vector (S, d)."""
    q = torch.nn.functional.normalize(query_vec.float().reshape(1, -1), dim=-1)
    return (torch.nn.functional.normalize(item_vecs.float(), dim=-1) @ q.T).squeeze(1).tolist()
