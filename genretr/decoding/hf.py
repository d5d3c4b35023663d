"""Trie-constrained retrieval through HF `generate` (the peers' method).

`prefix_allowed_tokens_fn` walks the trie once per beam per step; beams that already
ended are padded.  Candidates map back to items through the `IdTable`'s inverse map;
items are ranked by their identifier's beam score, duplicates removed.
"""
from __future__ import annotations

import time

import torch

from genretr.decoding.trie import Trie
from genretr.identifiers.base import EOS, PAD, IdTable


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
    starts = list(range(0, len(query_vecs), batch_size))
    t0 = time.perf_counter()
    it = track(starts, description="constrained beam search", transient=True) if progress else starts
    for s in it:
        z = query_vecs[s:s + batch_size].to(model.device)
        seqs, scores = model.generate(z, num_beams=beams, max_new_tokens=trie.max_len, prefix_allowed_tokens_fn=fn,
                                      length_penalty=length_penalty)
        seqs, scores = seqs.view(len(z), beams, -1).cpu(), scores.view(len(z), beams).cpu()
        for q in range(len(z)):
            ranked, seen = [], set()
            for b in torch.argsort(scores[q], descending=True, stable=True).tolist():
                for iid in table.items_of(_until_eos(seqs[q, b].tolist())):
                    if iid not in seen:
                        seen.add(iid)
                        ranked.append(iid)
            rankings.append(ranked[:top_k])
    elapsed = time.perf_counter() - t0
    return rankings, len(query_vecs) / max(elapsed, 1e-9)
