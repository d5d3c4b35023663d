"""Decoder training samples (GRACE Sec. 3.4-3.5, Appendix A).

* learning to memorize: an item's own vector (an image enters as prefix vectors) → its identifier;
* learning to retrieve: a training query → the identifier of each relevant item;
* pseudo-queries (GRACE Appendix A): captions a captioner wrote for pool items that have no training
  query, added as retrieve samples.

Samples are a dict of tensors (`genretr.data.datamodules.IdentifierDataModule`): ``z`` input vector,
``target_z`` the target item's vector, ``labels`` identifier tokens, ``phase`` (0 memorize, 1 retrieve),
``query`` (the training query a retrieve sample comes from, numbered from 0; -1 for the others: what
`IdentifierDataModule` may hold out to stop early on) and ``src`` query tokens when the backbone reads tokens.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from genretr.errors import GenretrError
from genretr.identifiers.base import IdTable

log = logging.getLogger(__name__)
MEMORIZE, RETRIEVE = 0, 1


@dataclass
class PseudoQueries:
    """Texts written for items, their vectors (embedded like real queries), and the item each describes."""

    texts: list[str]
    vecs: torch.Tensor
    item_ids: list[str]


def decoder_samples(ds, emb, table: IdTable, tasks, memorize: bool = True, memorize_repeat: int = 1,
                    retrieve: bool = True, pseudo: PseudoQueries | None = None, vocab=None, max_src_len: int = 32,
                    labels_width: int | None = None, answers: dict[str, list[int]] | None = None,
                    space=None) -> dict[str, torch.Tensor]:
    """Every sample the decoder trains on (memorize first, then retrieve, then pseudo-queries).
    `answers` (item id -> target tokens) replaces the identifier as the target (SSID's identifier +
    rationale, `genretr.rationale`).  `space` (`genretr.stages.context.DecoderSpace`) maps every input and
    target vector into the space the decoder reads (GENIUS Eq. 9); None: the encoder's vectors."""
    index = {iid: i for i, iid in enumerate(table.item_ids)}
    z, target, rows, texts, phase, query = [], [], [], [], [], []
    pairs = [(q, r) for q in ds.splits["train"].queries if q.task in tasks for r in q.relevant if r in index] \
        if retrieve else []
    keep = [k for k, i in enumerate(pseudo.item_ids) if i in index] if pseudo is not None else []
    # the items read (every one to memorize, else the targets), each looked up and mapped once
    needed = list(table.item_ids) if memorize else list(dict.fromkeys(
        [r for _, r in pairs] + [pseudo.item_ids[k] for k in keep]))
    item_vecs = emb.items(needed)
    if space is not None and needed:
        item_vecs = space.items(needed, item_vecs)
    item_row = {i: k for k, i in enumerate(needed)}

    def add(vecs, item_ids, query_texts, ph, query_numbers=None):
        if not item_ids:
            return
        z.append(vecs)
        target.append(item_vecs[[item_row[i] for i in item_ids]])
        rows.extend(index[i] for i in item_ids)
        texts.extend(query_texts)
        phase.extend([ph] * len(item_ids))
        query.extend(query_numbers if query_numbers is not None else [-1] * len(item_ids))

    if memorize:
        items = list(table.item_ids)
        item_texts = [ds.items[i].text for i in items]
        for _ in range(memorize_repeat):
            add(item_vecs, items, item_texts, MEMORIZE)
    if pairs:
        queries = list({q.id: q for q, _ in pairs}.values())  # a query with several targets is mapped once
        qvecs = emb.queries([q.id for q in queries])
        if space is not None:
            qvecs = space.queries(queries, qvecs)
        row = {q.id: k for k, q in enumerate(queries)}
        add(qvecs[[row[q.id] for q, _ in pairs]], [r for _, r in pairs], [q.text for q, _ in pairs], RETRIEVE,
            [row[q.id] for q, _ in pairs])
    if pseudo is not None:
        pvecs = pseudo.vecs[keep]
        if space is not None and keep:
            pvecs = space.texts(pvecs)
        add(pvecs, [pseudo.item_ids[k] for k in keep], [pseudo.texts[k] for k in keep], RETRIEVE)
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
           "phase": torch.tensor(phase, dtype=torch.long), "query": torch.tensor(query, dtype=torch.long)}
    if vocab is not None:
        out["src"] = vocab.encode(texts, max_src_len)
    return out


def draw_rows(total: int, n: int, seed: int) -> list[int]:
    """`n` of `total` row indices drawn without replacement (seeded), in their original order."""
    if n < 0:
        raise GenretrError(f"train.limit={n} must be >= 0")
    if n > total:
        log.warning("train.limit=%d: there are only %d training samples; training on all of them", n, total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values.tolist()


def draw_samples(samples: dict, n: int, seed: int) -> dict:
    """`n` samples of a sample dict (`draw_rows`)."""
    keep = torch.tensor(draw_rows(len(samples["labels"]), n, seed), dtype=torch.long)
    return {k: v[keep] for k, v in samples.items()}


def with_query_column(samples: dict, other: dict) -> dict:
    """`samples` with a ``query`` column of -1 (not from a training query) when only `other` has one."""
    if "query" in samples or "query" not in other:
        return samples
    return {**samples, "query": torch.full((len(samples["labels"]),), -1, dtype=torch.long)}


def concat_samples(a: dict, b: dict) -> dict:
    """Concatenate two sample dicts; `labels` (and `src`) are padded to the wider of the two.  A ``query``
    column only one of them has is -1 in the other's rows."""
    a, b = with_query_column(a, b), with_query_column(b, a)
    out = {}
    for k in a:
        x, y = a[k], b[k]
        if x.dim() == 2 and x.shape[1] != y.shape[1] and k in ("labels", "src"):
            w = max(x.shape[1], y.shape[1])
            x, y = (torch.nn.functional.pad(t, (0, w - t.shape[1])) for t in (x, y))
        out[k] = torch.cat([x, y])
    return out
