"""Decoder training samples (GRACE Sec. 3.4-3.5, Appendix A).

* learning to memorize: an item's own vector (an image enters as prefix vectors) → its identifier;
* learning to retrieve: a training query → the identifier of each relevant item;
* pseudo-queries (GRACE Appendix A): captions a captioner wrote for pool items that have no training
  query, added as retrieve samples.

Samples are a dict of tensors (`genretr.data.datamodules.IdentifierDataModule`): ``z`` input vector,
``target_z`` the target item's vector, ``labels`` identifier tokens, ``phase`` (0 memorize, 1 retrieve),
and ``src`` query tokens when the backbone reads tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from genretr.identifiers.base import IdTable

MEMORIZE, RETRIEVE = 0, 1


@dataclass
class PseudoQueries:
    """Texts written for items, their vectors (embedded like real queries), and the item each describes."""

    texts: list[str]
    vecs: torch.Tensor
    item_ids: list[str]


def decoder_samples(ds, emb, table: IdTable, tasks, memorize: bool = True, memorize_repeat: int = 1,
                    retrieve: bool = True, pseudo: PseudoQueries | None = None, vocab=None, max_src_len: int = 32,
                    labels_width: int | None = None, answers: dict[str, list[int]] | None = None
                    ) -> dict[str, torch.Tensor]:
    """Every sample the decoder trains on (memorize first, then retrieve, then pseudo-queries).
    `answers` (item id -> target tokens) replaces the identifier as the target (SSID's identifier +
    rationale, `genretr.rationale`)."""
    index = {iid: i for i, iid in enumerate(table.item_ids)}
    z, target, rows, texts, phase = [], [], [], [], []

    def add(vecs, item_ids, query_texts, ph):
        if not item_ids:
            return
        z.append(vecs)
        target.append(emb.items(item_ids))
        rows.extend(index[i] for i in item_ids)
        texts.extend(query_texts)
        phase.extend([ph] * len(item_ids))

    if memorize:
        items = list(table.item_ids)
        item_texts = [ds.items[i].text for i in items]
        for _ in range(memorize_repeat):
            add(emb.items(items), items, item_texts, MEMORIZE)
    if retrieve:
        pairs = [(q, r) for q in ds.splits["train"].queries if q.task in tasks for r in q.relevant if r in index]
        add(emb.queries([q.id for q, _ in pairs]), [r for _, r in pairs], [q.text for q, _ in pairs], RETRIEVE)
    if pseudo is not None:
        keep = [k for k, i in enumerate(pseudo.item_ids) if i in index]
        add(pseudo.vecs[keep], [pseudo.item_ids[k] for k in keep], [pseudo.texts[k] for k in keep], RETRIEVE)
    if not rows:
        raise ValueError("no decoder training samples: memorize and retrieve are both off or empty")
    if answers is not None:
        targets = [answers[table.item_ids[r]] for r in rows]
        labels = torch.zeros(len(targets), max(map(len, targets)), dtype=torch.long)
        for k, t in enumerate(targets):
            labels[k, : len(t)] = torch.tensor(t)
    else:
        labels = torch.from_numpy(table.sequences[rows]).long()
    if labels_width is not None:
        labels = labels[:, :labels_width]
    out = {"z": torch.cat(z).float(), "target_z": torch.cat(target).float(), "labels": labels,
           "phase": torch.tensor(phase, dtype=torch.long)}
    if vocab is not None:
        out["src"] = vocab.encode(texts, max_src_len)
    return out
