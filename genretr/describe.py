"""Describing memorized images (GRACE Sec. 4.5): "describe image <ID>" -> a caption.

With `train.describe=true` (token-input backbones: `backbone.input=tokens`) the decoder also learns an
instruction task on the train images: the prompt "describe image" followed by the image's identifier
tokens, the target one of its captions.  The output vocabulary is the identifier vocabulary plus the
caption words (appended after it, so identifiers keep their token ids and the trie is unchanged).
After training, the model describes every test-pool image from its identifier alone -- it has seen those
images only through learning to memorize (their captions stay unseen) -- and each description is scored
by whether it retrieves its own image with the embedding model (R@1, R@5 of the description as a t2i query).
"""
from __future__ import annotations

import torch

from genretr.data.vocab import WordVocab, words
from genretr.identifiers.base import EOS, PAD, IdTable

PROMPT = "describe image"


def id_word(token: str) -> str:
    """The query-vocabulary word standing for an identifier token."""
    return f"<id:{token}>"


def caption_words(ds) -> list[str]:
    """Output words of the describe task: the words of the train captions."""
    return sorted({w for q in ds.splits["train"].queries if q.task == "t2i" and q.text for w in words(q.text)})


def prompts(vocab: WordVocab, table: IdTable, item_ids: list[str], max_len: int) -> torch.Tensor:
    """(n, max_len) src ids of "describe image <ID tokens>"."""
    head = vocab.encode([PROMPT], max_len)[0]
    n_head = int((head != PAD).sum())
    out = torch.zeros(len(item_ids), max_len, dtype=torch.long)
    for r, iid in enumerate(item_ids):
        ids = [vocab.index[id_word(table.vocab[t])] for t in table.tokens(iid)[:-1]]
        row = (head[:n_head].tolist() + ids)[:max_len]
        out[r, : len(row)] = torch.tensor(row)
    return out


def samples(ds, table: IdTable, vocab: WordVocab, out_words: list[str], max_src_len: int, dim: int):
    """Train items' (prompt, caption) samples in `genretr.samples` layout (phase 1, z unused: text given)."""
    in_table = set(table.item_ids)
    pairs = [(r, q.text) for q in ds.splits["train"].queries if q.task == "t2i" and q.text for r in q.relevant
             if r in in_table]
    index = {w: table.vocab_size + k for k, w in enumerate(out_words)}
    rows = [[index[w] for w in words(text) if w in index] + [EOS] for _, text in pairs]
    width = max(len(r) for r in rows)
    labels = torch.zeros(len(rows), width, dtype=torch.long)
    for k, r in enumerate(rows):
        labels[k, : len(r)] = torch.tensor(r)
    return {"z": torch.zeros(len(pairs), dim), "target_z": torch.zeros(len(pairs), dim), "labels": labels,
            "phase": torch.ones(len(pairs), dtype=torch.long),
            "src": prompts(vocab, table, [r for r, _ in pairs], max_src_len)}


@torch.no_grad()
def describe(model, table: IdTable, vocab: WordVocab, out_words: list[str], item_ids: list[str], max_src_len: int,
             dim: int, max_len: int = 24) -> list[str]:
    """Greedy descriptions of `item_ids` from their identifiers alone (identifier tokens are dropped)."""
    from genretr.decoding.engine import beam_search

    q = {"z": torch.zeros(len(item_ids), dim), "src": prompts(vocab, table, item_ids, max_src_len)}
    res = beam_search(model, q, None, 1, max_len=max_len)
    texts = []
    for toks, n in zip(res.tokens[:, 0].tolist(), res.lengths[:, 0].tolist()):
        texts.append(" ".join(out_words[t - table.vocab_size] for t in toks[:n] if t >= table.vocab_size))
    return texts
