"""Query words that stand for identifier tokens, read through the decoder's own rows of the token.

GRACE Sec. 4.5 asks a model that memorised an image under <ID> to "describe image <ID>".  With a token-input
decoder (`backbone.input=tokens`, `backbone=cart`) the prompt's ID words are query words; given their own
embedding rows they learn only from the describe samples of train images, so describing a test image could
not show anything memorising taught the decoder.  Tied, each such word is read through the row the decoder
gives its identifier token, which every sample whose target holds that token trains: on T5 the output layer's
(`T5PrefixDecoder.id_rows`), from memorise samples; on CART, which reads text only, its target embedding, from
its retrieve and pseudo-query targets.
"""
from __future__ import annotations

import torch
from torch import nn


def target_index(src_vocab_size: int, pairs) -> torch.Tensor | None:
    """(src_vocab_size,) long: the decoder token each query word stands for, -1 for a plain word; None without
    `pairs` ([query word id, decoder token id] each)."""
    if not pairs:
        return None
    index = torch.full((src_vocab_size,), -1, dtype=torch.long)
    for word, token in pairs:
        index[int(word)] = int(token)
    return index


def embed_source(src_embed: nn.Embedding, tgt_rows: torch.Tensor, index: torch.Tensor | None,
                 src: torch.Tensor) -> torch.Tensor:
    """(N, L, d) embeddings of query words `src` (N, L): a word in `index` reads its token's row of `tgt_rows`
    (V, d), rows of the decoder that its targets train (the module docstring says which)."""
    x = src_embed(src)
    if index is None:
        return x
    token = index[src]  # (N, L), -1 for plain words
    return torch.where((token >= 0)[..., None], tgt_rows[token.clamp(min=0)], x)
