"""SSID's rationale-guided supervision (Sec. III-D, Table III) for the word-level decoders (T5, CART).

With ``train.reason`` in ``both`` / ``train_only`` the decoder's target is

    identifier tokens  <reason>  rationale words  </s>

instead of ``identifier tokens </s>``: the rationale (`IdTable.reasons`, written by ``identifier=ssid``)
is an auxiliary next-token target after the identifier.  The output vocabulary is the identifier
vocabulary plus ``<reason>`` and the rationale words, appended after it (identifier token ids are kept).

At inference the trie constrains the identifier only; what ends it is the format of the answer:

- ``both``: the model is asked for the rationale too, so an identifier ends with ``<reason>`` (as in
  training; `AnswerWithReason`); the rationale after it cannot change the ranking (it comes later);
- ``train_only``: the answer is the identifier alone, so it ends with ``</s>`` -- a format the model never
  saw in training, SSID's "w/ Reason (Training Only)" row;
- ``none``: no rationale anywhere (``identifier </s>`` in training and at inference).

``auto`` (the default) is ``both`` when the identifier scheme wrote rationales and ``none`` otherwise.
The MLLM backbones take the same mode (`genretr.backbones.mllm`: there the inference prompt asks for the
rationale or not).
"""
from __future__ import annotations

import numpy as np
import torch

from genretr.data.vocab import words
from genretr.errors import GenretrError
from genretr.identifiers.base import EOS, IdTable

MODES = ("auto", "both", "train_only", "none")
SEP = "<reason>"


def resolve(mode: str, reasons: dict) -> str:
    """The effective mode: `auto` becomes `both` with rationales, `none` without."""
    if mode not in MODES:
        raise GenretrError(f"train.reason={mode} is not one of {', '.join(MODES)}")
    if mode == "auto":
        return "both" if reasons else "none"
    if mode != "none" and not reasons:
        raise GenretrError(f"train.reason={mode} needs rationales: use identifier=ssid (it writes them) "
                           "or train.reason=none")
    return mode


def reason_words(reasons: dict) -> list[str]:
    """The rationale vocabulary: every word of every rationale, sorted."""
    return sorted({w for r in reasons.values() for w in words(r)})


class ReasonVocab:
    """``<reason>`` at `offset`, then the rationale words; ids follow the identifier vocabulary."""

    def __init__(self, reasons: dict, offset: int):
        self.reasons, self.offset = reasons, offset
        self.words = reason_words(reasons)
        self.sep = offset
        self.index = {w: offset + 1 + k for k, w in enumerate(self.words)}

    def __len__(self) -> int:
        return 1 + len(self.words)

    def answers(self, table: IdTable) -> dict[str, list[int]]:
        """item id -> identifier tokens, <reason>, rationale words, </s> (SSID Sec. III-F training target)."""
        out = {}
        for item in table.item_ids:
            if not self.reasons.get(item):
                raise GenretrError(f"train.reason asks for a rationale but item {item} has none in the IdTable")
            ident = list(table.tokens(item)[:-1])
            out[item] = ident + [self.sep] + [self.index[w] for w in words(self.reasons[item])] + [EOS]
        return out


class _SwappedStepDecoder:
    """A `StepDecoder` whose next-token logits of ``</s>`` and ``<reason>`` are exchanged."""

    def __init__(self, inner, sep: int):
        self.inner, self.sep = inner, sep

    def __getattr__(self, name):  # prepare, new_cache, reorder, vocab_size, ...
        return getattr(self.inner, name)

    def step(self, *args, **kwargs):
        logits = self.inner.step(*args, **kwargs)
        idx = torch.arange(logits.shape[-1], device=logits.device)
        idx[EOS], idx[self.sep] = self.sep, EOS
        return logits.index_select(-1, idx)


class AnswerWithReason(torch.nn.Module):
    """The decoder as ``train.reason=both`` reads it at inference: an identifier ends where the model
    writes ``<reason>``.  The decoding engine ends identifiers at ``</s>``, so the two tokens' logits
    are exchanged: the engine's ``</s>`` step scores the model's ``<reason>`` (exactly; the rationale
    that would follow cannot change an identifier's score).  The engine's trie is unchanged."""

    def __init__(self, model, sep: int):
        super().__init__()
        self.model, self.sep = model, sep
        self.train(model.training)  # a fresh Module is in training mode: keep the model's (dropout off)

    def step_decoder(self):
        from genretr.decoding.engine import step_decoder_of

        return _SwappedStepDecoder(step_decoder_of(self.model), self.sep)
