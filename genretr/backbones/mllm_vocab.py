"""Identifier tokens an MLLM learns as new vocabulary (GRACE Sec. 3.3: structured, atomic and image-token IDs).

A scheme whose identifiers are tokens of their own lists them in `IdTable.new_tokens` ("C_1_4", "<item_17>",
"v2_31", "#0").  On an MLLM each one is added to the tokenizer as ONE token (an `AddedToken`, never
normalized, so "<item_17>" is not spelled with eight sub-tokens) and gets an input-embedding row and an
LM-head row of its own, initialised to the mean of the pretrained rows and always trainable, LoRA or not
(`extend_vocabulary`).  The rows sit in `ExtendedEmbedding` / `ExtendedHead`, which serve the identifier ids
over the model's own embedding and head, so they are saved in the model's state dict and a model rebuilt
with the same tokens loads them back.  Rows of their own rather than `resize_token_embeddings`: hub
checkpoints pad their matrices past the tokenizer (Qwen2.5-VL: 152064 rows, 151665 tokens), so the
tokenizer's next ids fall on untrained padding rows; and IDEFICS splits its embeddings into a base and an
additional part (its image tokens), which a resize collapses into one.  Here the width of the LM head grows
to cover every new id, whatever the family's layout.

Other identifiers stay text in the LLM's own tokens (SSID Sec. III-C "vocabulary compatibility"):
words keep their spaces; the pieces of a number (GRACE's string and numeric IDs, "137 68") are read as
the plain digit string "13768", tokenized as the LLM tokenizes numbers (`spells_numbers`).

`identifier_head="classifier"` (GRACE's atomic IDs through a classifier head, as `identifier.head` on T5):
the answer is the item's token alone, the loss a cross-entropy over the identifier tokens only (one logit
per item from the last hidden state), and the head's rows are not tied to the input rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genretr.errors import GenretrError
from genretr.identifiers.base import SPECIAL_TOKENS, IdTable

HEADS = ("vocab", "classifier")


def spells_numbers(table: IdTable) -> bool:
    """Whether every token of `table` is a string of digits (the pieces of one number per item)."""
    words = [t for t in table.vocab if t not in SPECIAL_TOKENS]
    return not table.new_tokens and bool(words) and all(w.isdigit() for w in words)


def identifier_options(table: IdTable, classifier_head: bool) -> dict:
    """The `MLLMRetriever` arguments that follow from the identifiers (the decoder adapter passes them)."""
    return {"identifier_tokens": list(table.new_tokens), "number_ids": spells_numbers(table),
            "identifier_head": "classifier" if classifier_head else "vocab"}


class ExtendedEmbedding(nn.Module):
    """The model's input embedding, with `rows[j]` as the embedding of token `token_ids[j]`."""

    def __init__(self, base: nn.Module, token_ids: torch.Tensor, rows: nn.Parameter, width: int):
        super().__init__()
        self.base, self.rows, self.num_embeddings = base, rows, width
        slot = torch.full((width,), -1, dtype=torch.long)
        slot[token_ids] = torch.arange(len(token_ids))
        self.register_buffer("slot", slot, persistent=False)

    @property
    def weight(self) -> torch.Tensor:  # HF reads the embedding's dtype and device off it
        return self.base.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        slot = self.slot[ids]
        hit = slot >= 0
        out = self.base(ids.masked_fill(hit, 0))
        return torch.where(hit[..., None], self.rows[slot.clamp(min=0)].to(out.dtype), out)


class ExtendedHead(nn.Module):
    """The model's LM head widened to `width` columns; column `token_ids[j]` is ``h @ rows[j]``."""

    def __init__(self, base: nn.Module, token_ids: torch.Tensor, rows: nn.Parameter, width: int):
        super().__init__()
        self.base, self.rows, self.out_features = base, rows, width
        self.register_buffer("token_ids", token_ids.clone(), persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.base(h)
        logits = F.pad(logits, (0, self.out_features - logits.shape[-1]))
        new = (h.to(self.rows.dtype) @ self.rows.t()).to(logits.dtype)
        return logits.index_copy(-1, self.token_ids, new)


def add_tokens(tokenizer, tokens: list[str]) -> list[int]:
    """Add `tokens` to `tokenizer`, one token each (those it already has keep their id); their ids."""
    from tokenizers import AddedToken

    if len(set(tokens)) != len(tokens) or any(not t or t != t.strip() or " " in t for t in tokens):
        raise GenretrError("identifier tokens must be distinct, non-empty and without spaces")
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in tokens])
    ids = tokenizer.convert_tokens_to_ids(tokens)
    encoded = tokenizer(tokens, add_special_tokens=False)["input_ids"]
    split = [t for t, i, e in zip(tokens, ids, encoded) if e != [i]]
    if split:
        raise GenretrError(f"identifier tokens {split[:3]} do not encode to one token of the MLLM tokenizer")
    return ids


def spelled(token: str) -> str:
    """An identifier token as the MLLM tokenizer holds it: `<id:c7>`, never a word of a caption or a prompt, and
    never a token a pretrained vocabulary has."""
    return f"<id:{token}>"


def head_width(head: nn.Module) -> int:
    return int(head.out_features + getattr(head, "out_additional_features", 0))


def extend_vocabulary(model, tokens: list[str], untie_head: bool) -> torch.Tensor:
    """Add `tokens` (`spelled`) to `model`'s tokenizer and give each an embedding row and a head row (mean-initialised,
    trainable; shared when the model ties its head to its embedding, unless `untie_head`); their LLM ids."""
    hf, tok = model.hf, model.processor.tokenizer
    known = len(tok)
    ids = torch.tensor(add_tokens(tok, [spelled(t) for t in tokens]), dtype=torch.long)
    if int(ids.min()) < known:
        raise GenretrError(f"backbone {model.family}: identifier tokens {tokens[:3]} are already in the tokenizer")
    embed, head = hf.get_input_embeddings(), hf.get_output_embeddings()
    base_width = head_width(head)
    width = max(base_width, int(ids.max()) + 1)
    beyond = set(range(base_width, width)) - set(ids.tolist())
    if beyond:
        raise GenretrError(f"backbone {model.family}: token ids {sorted(beyond)[:3]} lie past the LM head and are "
                           "no identifier token")

    def mean_rows(weight: torch.Tensor) -> nn.Parameter:
        mean = weight.detach()[: min(known, len(weight))].float().mean(0)
        return nn.Parameter(mean.expand(len(ids), -1).clone())

    tied = head.weight is embed.weight and not untie_head
    in_rows = mean_rows(embed.weight)
    out_rows = in_rows if tied else mean_rows(head.weight)
    hf.set_input_embeddings(ExtendedEmbedding(embed, ids, in_rows, width))
    hf.set_output_embeddings(ExtendedHead(head, ids, out_rows, width))
    return ids


class IdentifierVocabulary:
    """How an `MLLMRetriever` spells identifiers: added tokens by their id, other pieces as LLM text."""

    def __init__(self, model, tokens: list[str] | None, number_ids: bool, head: str):
        if head not in HEADS:
            raise GenretrError(f"identifier.head={head} is not one of {', '.join(HEADS)}")
        if head == "classifier" and (not tokens or model.reason != "none"):
            raise GenretrError("identifier.head=classifier ranks one token per item in one step: it needs "
                               "identifier tokens (identifier=atomic) and train.reason=none")
        self.model, self.head, self.number_ids = model, head, bool(number_ids)
        self.tokens = list(tokens or [])
        self.ids = extend_vocabulary(model, self.tokens, head == "classifier") if self.tokens else None
        self.id_of = dict(zip(self.tokens, self.ids.tolist())) if self.tokens else {}

    def encode(self, text: str) -> list[int]:
        """LLM ids of an identifier written as `IdTable.text` (space-separated tokens)."""
        out, words = [], []

        def flush():
            if words:
                out.extend(self.model.token_ids(("" if self.number_ids else " ").join(words)))
                words.clear()

        for piece in text.split(" "):
            if piece in self.id_of:
                flush()
                out.append(self.id_of[piece])
            else:
                words.append(piece)
        flush()
        return out

    def classifier_loss(self, batch: dict) -> torch.Tensor:
        """Cross-entropy over the identifier tokens at the prompt's last position (every left-padded row ends
        with its item's token): a classifier over the items."""
        ids = self.ids.to(batch["labels"].device)
        hit = batch["labels"][:, -1:] == ids  # (B, items)
        if not bool(hit.any(1).all()):
            raise GenretrError("identifier.head=classifier: an answer is not one identifier token")
        logits = self.model(batch, logits_to_keep=2)[:, 0]
        return F.cross_entropy(logits[:, ids].float(), hit.float().argmax(1))
