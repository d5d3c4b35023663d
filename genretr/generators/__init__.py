"""Identifier generators for SSID (Sec. III-C, III-E): one request per item in, raw three-line text out.

A generator answers the prompt of Sec. III-E with ``caption:<...>`` / ``identifier:<...>`` / ``reason:<...>``;
`genretr.identifiers.ssid` parses, repairs, retries and caches.  `keywords.KeywordsGenerator` composes the
answer offline from the captions (a stand-in for an MLLM); `genretr.backbones.mllm_generator.MLLMGenerator`
(beside the MLLM backbone whose loader it uses) asks Qwen2.5-VL, LLaVA-1.6 or IDEFICS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Request:
    item_id: str
    prompt: str  # the full Sec. III-E prompt (stricter on a retry)
    caption: str | None = None  # the caption the prompt shows (None: the model writes one)
    captions: tuple[str, ...] = ()  # every caption known for the item
    image: np.ndarray | None = field(default=None, compare=False)  # uint8 HxWx3


class Generator(Protocol):
    needs_text: bool  # True: works from captions only (every item needs one)

    def fit(self, train_texts: list[str], groups: list[list[str]] = ()) -> None:
        """See the training captions, and each training item's captions as one group (before any `generate`)."""

    def generate(self, requests: list[Request]) -> list[str]:
        """One raw answer per request."""

    def signature(self) -> dict:
        """What determines the answers (keys the SSID cache)."""

    # A model-backed generator also has `place(device)` (run where the run's models do, unless configured) and
    # `release()` (free its weights once the identifiers are written); SSID calls both when present.
