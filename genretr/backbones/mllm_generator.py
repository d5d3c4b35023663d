"""`MLLMGenerator`: SSID's identifier generation by a multimodal LLM (Sec. III-C, III-E).

The model (Qwen2.5-VL, LLaVA-1.6 or IDEFICS, `genretr.backbones`) sees the item's image and the Sec. III-E
prompt (with the item's caption when one is known) and answers greedily with the three lines.  Weights load
from a local path or the HF cache only (``local_files_only``); a missing checkpoint raises
`MissingWeightsError` naming what to fetch.  They load at the first `generate`, so a complete SSID cache
never loads them.  ``pretrained: null`` with a `config` dict builds a randomly initialised model (tests).
"""
from __future__ import annotations

import gc

import torch

from genretr.backbones.mllm import MLLMRetriever, plain, retriever_class
from genretr.errors import GenretrError
from genretr.generators import Request


class MLLMGenerator:
    needs_text = False

    def __init__(self, model: str = "qwen25vl", pretrained: str | None = None, batch_size: int = 4,
                 max_new_tokens: int = 96, config: dict | None = None, processor=None, dtype: str = "bfloat16",
                 device: str | None = None, seed: int = 0):
        if batch_size < 1 or max_new_tokens < 1:
            raise GenretrError("mllm generator: batch_size and max_new_tokens must be >= 1")
        self.cls = retriever_class(model)
        self.model, self.pretrained, self.config = model, pretrained, plain(config)
        self.batch_size, self.max_new_tokens = int(batch_size), int(max_new_tokens)
        self.processor, self.dtype, self.seed = processor, dtype, seed
        self.requested_device = device
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._backbone: MLLMRetriever | None = None

    def load(self) -> MLLMRetriever:
        if self._backbone is None:
            torch.manual_seed(self.seed)  # the weights of a randomly initialised model
            self._backbone = self.cls(pretrained=self.pretrained, config=self.config, processor=self.processor,
                                      reason="none", dtype=self.dtype).to(self.device).eval()
        return self._backbone

    def place(self, device) -> None:
        """Run on the run's device (`IdentifierContext.device`) unless the config named one."""
        if self.requested_device is None and self._backbone is None:
            self.device = str(device)

    def fit(self, train_texts: list[str], groups: list[list[str]] = ()) -> None:
        """An MLLM needs no fitting."""

    @property
    def loaded(self) -> bool:
        return self._backbone is not None

    def release(self) -> None:
        """Free the weights (and their GPU memory) once the identifiers are written, before the train stage
        loads its own model; a later `generate` loads them again.  The collection comes first: a model's
        reference cycles (modules that point back at their parent) would otherwise keep the weights alive."""
        self._backbone = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate(self, requests: list[Request]) -> list[str]:
        backbone, out = self.load(), []
        for s in range(0, len(requests), self.batch_size):
            chunk = requests[s:s + self.batch_size]
            out += greedy(backbone, [{"prompt": r.prompt, "image": r.image} for r in chunk], self.max_new_tokens)
        return out

    def signature(self) -> dict:
        return {"generator": "mllm", "model": self.model, "pretrained": self.pretrained, "config": self.config,
                "max_new_tokens": self.max_new_tokens, "dtype": self.dtype,
                "seed": self.seed if self.pretrained is None else None}


@torch.no_grad()
def greedy(model: MLLMRetriever, samples: list[dict], max_new_tokens: int) -> list[str]:
    """Greedy free-text answers to prompts, through the model's step decoder, each up to its first stop token
    (`model.stop_ids`: eos, and the end of an instruct model's turn)."""
    sd = model.step_decoder()
    state = sd.prepare(samples)
    N, cache = len(samples), sd.new_cache(len(samples), max_new_tokens + 1)
    cache.kv, logits, out = state.cache, state.logits, []
    stops = torch.tensor(model.stop_ids, device=sd.device)
    done = torch.zeros(N, dtype=torch.bool, device=sd.device)
    for t in range(max_new_tokens):
        tok = logits.argmax(-1).masked_fill(done, model.pad_id)
        out.append(tok)
        done |= torch.isin(tok, stops)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        logits = sd.llm_step(tok, t + 1, N, 1, state, cache)
    texts = []
    for row in torch.stack(out, 1).tolist():
        ends = [k for k, token in enumerate(row) if token in model.stop_ids]
        texts.append(model.processor.tokenizer.decode(row[: ends[0]] if ends else row, skip_special_tokens=True))
    return texts
