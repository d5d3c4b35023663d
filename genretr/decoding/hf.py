"""Trie-constrained retrieval through HF `generate` (the peers' method).

`prefix_allowed_tokens_fn` walks the trie once per beam per step; beams that already
ended are padded.  Candidates map back to items through the `IdTable`'s inverse map;
items are ranked by their identifier's beam score, duplicates removed.

`TrieLogitsProcessor` applies the engine's vectorised constraint inside HF `generate`, and
`hf_generate` runs HF beam search with either constraint (the benchmark's baselines).
"""
from __future__ import annotations

import time

import torch
from transformers import LogitsProcessor

from genretr.decoding import queries as Q
from genretr.decoding.csr_trie import CSRTrie
from genretr.decoding.trie import Trie
from genretr.identifiers.base import EOS, PAD, IdTable

NEG_INF = float("-inf")


def prefix_allowed_fn(trie: Trie):
    def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        return trie.allowed(input_ids[1:].tolist()) or [PAD]  # drop the decoder start token

    return allowed


def _until_eos(seq: list[int]) -> list[int]:
    """HF fills finished beams with EOS when pad id is 0 (falsy): keep tokens up to the first EOS."""
    return seq[: seq.index(EOS) + 1] if EOS in seq else seq


@torch.no_grad()
def constrained_search(model, query_vecs: torch.Tensor, trie: Trie, table: IdTable, num_beams: int = 10,
                       batch_size: int = 64, length_penalty: float = 0.0, top_k: int = 10, progress: bool = True):
    """Ranked item ids (≤ top_k) per query, and the decoding throughput in queries/s."""
    from rich.progress import track

    model.eval()
    beams = min(num_beams, max(1, trie.num_sequences))
    fn = prefix_allowed_fn(trie)
    rankings: list[list[str]] = []
    starts = list(range(0, Q.count(query_vecs), batch_size))
    t0 = time.perf_counter()
    it = track(starts, description="constrained beam search", transient=True) if progress else starts
    for s in it:
        z = Q.to_device(Q.take(query_vecs, s, s + batch_size), model.device)
        n = Q.count(z)
        seqs, scores = model.generate(z, num_beams=beams, max_new_tokens=trie.max_len, prefix_allowed_tokens_fn=fn,
                                      length_penalty=length_penalty)
        seqs, scores = seqs.view(n, beams, -1).cpu(), scores.view(n, beams).cpu()
        for q in range(n):
            ranked, seen = [], set()
            for b in torch.argsort(scores[q], descending=True, stable=True).tolist():
                for iid in table.items_of(_until_eos(seqs[q, b].tolist())):
                    if iid not in seen:
                        seen.add(iid)
                        ranked.append(iid)
            rankings.append(ranked[:top_k])
    elapsed = time.perf_counter() - t0
    return rankings, Q.count(query_vecs) / max(elapsed, 1e-9)


class TrieLogitsProcessor(LogitsProcessor):
    """HF `LogitsProcessor`: -inf on every token the trie does not allow after each row's prefix.

    Equivalent to `PrefixConstrainedLogitsProcessor(prefix_allowed_fn(trie))` (rows whose prefix is
    complete or invalid may only emit PAD) but vectorised over all rows: the prefixes are walked
    down the CSR trie column by column and the allowed children scattered into one mask."""

    def __init__(self, trie, num_beams: int = 1, prompt_len: int = 1, inplace: bool = False):
        self.trie = CSRTrie.coerce(trie)
        self.num_beams = num_beams
        self.prompt_len = prompt_len  # decoder start token(s) to skip
        # inplace=True masks `scores` itself, sparing a (rows, V) allocation: safe in HF beam search (its
        # input is a fresh log-softmax), not in greedy search with output_logits=True (HF keeps that tensor)
        self.inplace = inplace

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        nodes = self.trie.walk(input_ids[:, self.prompt_len:])
        dead = self.trie.fanout(nodes) == 0
        if dead.any():  # complete or invalid prefix: only PAD (as `prefix_allowed_fn`)
            nodes = nodes.masked_fill(dead, -1)
        banned = self.trie.disallowed_mask(nodes, scores.shape[-1])
        banned[:, PAD] &= ~dead
        processed = scores.masked_fill_(banned, NEG_INF) if self.inplace else scores.masked_fill(banned, NEG_INF)
        # as HF: if no beam of a batch element has a finite allowed score, force the constraint with 0
        unsat = processed.amax(-1).isneginf().view(-1, self.num_beams).all(-1, keepdim=True)
        if unsat.any():
            zero = torch.zeros_like(scores).masked_fill(banned, NEG_INF)
            processed = torch.where(unsat.repeat_interleave(self.num_beams, 0), zero, processed)
        return processed


@torch.no_grad()
def hf_generate(model, z: torch.Tensor, num_beams: int, max_new_tokens: int, trie=None, mode: str = "processor",
                length_penalty: float = 0.0):
    """HF beam search (or greedy) on a T5PrefixDecoder with the trie as `TrieLogitsProcessor`
    (`mode="processor"`), as the Python `prefix_allowed_tokens_fn` (`mode="python"`), or unconstrained
    (`trie=None`).  Float query vectors are cast to the model's dtype (a bf16 model: the benchmark's
    "HF, model in bf16" row; HF's beam search casts the logits to float32).  Returns (sequences without
    the start token, scores)."""
    from transformers import LogitsProcessorList

    kwargs = {}
    if trie is not None and mode == "python":
        kwargs["prefix_allowed_tokens_fn"] = prefix_allowed_fn(trie)
    elif trie is not None:
        kwargs["logits_processor"] = LogitsProcessorList([TrieLogitsProcessor(trie, num_beams, inplace=True)])
    dtype = next(model.parameters()).dtype
    if torch.is_tensor(z) and z.is_floating_point():
        z = z.to(dtype)
    return model.generate(z, num_beams, max_new_tokens, num_return_sequences=num_beams,
                          length_penalty=length_penalty, **kwargs)
