"""Pretrained CLIP (Radford et al. 2021) towers for `ContrastiveEncoder` — `encoder=clip`.

`CLIPImageTower` is CLIP's vision transformer + `visual_projection`; `CLIPTextTower` is its
text transformer + `text_projection`.  Both follow the tower contract of `towers.py`.

Weights are read only from disk: `pretrained` is a local model directory (as written by
`save_pretrained` or `hf download --local-dir`) or a hub name already in the local Hugging
Face cache.  Nothing is ever fetched; when the weights are absent `MissingWeightsError`
says where they were looked for and how to get them.

One `CLIPModel` is loaded per path and split between the two towers: the image tower
registers only the vision half, the text tower only the text half, so the encoder's
`state_dict` holds each weight once.  A loaded model is handed out once per half (a second
image tower on the same path gets a fresh copy), so two encoders in one process — a Hydra
multirun, say — never share, and never fine-tune, each other's weights.

`freeze=True` (the zero-shot default) keeps the CLIP half in eval mode with
`requires_grad=False` and runs it under `no_grad`; `out_dim` adds a trainable linear layer
on top of CLIP's projection (None keeps CLIP's `projection_dim`).
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genretr.errors import MissingWeightsError
from genretr.weights import CheckpointNotFound, local_checkpoint, looks_like_hub_id

log = logging.getLogger(__name__)

DEFAULT_HUB_NAME = "openai/clip-vit-base-patch32"
# transformers.image_utils.OPENAI_CLIP_MEAN / OPENAI_CLIP_STD
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class _Loaded:
    model: nn.Module
    claimed: set[str] = field(default_factory=set)


_MODELS: dict[str, _Loaded] = {}   # resolved dir -> CLIPModel not yet handed out to both towers
_TOKENIZERS: dict[str, object] = {}


def _missing(pretrained: str, problem: str) -> MissingWeightsError:
    name = pretrained if looks_like_hub_id(pretrained) else DEFAULT_HUB_NAME
    return MissingWeightsError(
        f"CLIP weights not found: {problem}; on a machine with network run `hf download {name} --local-dir DIR` "
        f"(or `huggingface-cli download {name} --local-dir DIR`), copy DIR here and set "
        f"encoder.model.image_tower.pretrained=DIR encoder.model.text_tower.pretrained=DIR (or export GENRETR_CLIP=DIR)")


def resolve_pretrained(pretrained: str) -> Path:
    """The local directory holding `pretrained`: the path itself, or its snapshot in the local HF cache."""
    pretrained = str(pretrained)
    if Path(pretrained).expanduser().is_file():
        raise MissingWeightsError(
            f"CLIP weights not found: {pretrained!r} is a file, not a model directory; if it is a training "
            f"checkpoint (UniIR's clip_sf_large.pth, say), convert it with `python -m genretr.encoders.clip_convert "
            f"{pretrained} --base openai/clip-vit-large-patch14 --out DIR` (--base: the HF CLIP of its architecture) "
            f"and set GENRETR_CLIP=DIR")
    try:
        return local_checkpoint(pretrained)
    except CheckpointNotFound as e:
        raise _missing(pretrained, str(e)) from None


def _claim_model(pretrained: str, part: str):
    """The CLIPModel at `pretrained`, loaded once and shared by one image tower and one text tower."""
    from transformers import CLIPModel

    key = str(resolve_pretrained(pretrained))
    entry = _MODELS.get(key)
    if entry is None or part in entry.claimed:
        try:
            # dtype: transformers 5 defaults to "auto" (the checkpoint's dtype, fp16 for some CLIPs).
            model = CLIPModel.from_pretrained(key, local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise _missing(pretrained, f"could not load a CLIPModel from {key!r} "
                                       f"({' '.join(str(e).split())[:200]})") from e
        model.logit_scale.requires_grad_(False)  # unused: ContrastiveEncoder has its own temperature
        entry = _MODELS[key] = _Loaded(model)
        log.info("loaded CLIP from %s", key)
    entry.claimed.add(part)
    if entry.claimed >= {"vision", "text"}:
        del _MODELS[key]
    return entry.model, key


def _load_tokenizer(key: str, pretrained: str):
    if key not in _TOKENIZERS:
        from transformers import AutoTokenizer

        try:
            _TOKENIZERS[key] = AutoTokenizer.from_pretrained(key, local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            raise _missing(pretrained, f"no CLIP tokenizer in {key!r} ({' '.join(str(e).split())[:200]})") from e
    return _TOKENIZERS[key]


class _CLIPTower(nn.Module):
    part: str

    def __init__(self, pretrained: str, freeze: bool, out_dim: int | None):
        super().__init__()
        model, self.model_dir = _claim_model(pretrained, self.part)
        # Not a submodule: each tower registers only its own half (see the module docstring).
        self.__dict__["clip"] = model
        self.pretrained, self.frozen = str(pretrained), bool(freeze)
        self.clip_dim = int(model.config.projection_dim)
        self.out_dim = int(out_dim) if out_dim else self.clip_dim
        self.proj = nn.Linear(self.clip_dim, self.out_dim) if out_dim else None

    def _clip_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def _setup_freeze(self):
        for m in self._clip_modules():
            m.requires_grad_(not self.frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:  # Lightning calls .train() on the whole module at fit start
            for m in self._clip_modules():
                m.eval()
        return self

    def _clip_context(self):
        return torch.no_grad() if self.frozen else contextlib.nullcontext()

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) if self.proj is not None else x


class CLIPImageTower(_CLIPTower):
    """CLIP vision transformer + visual projection: (B, H, W, 3) uint8 → (B, out_dim).

    Images are resized (bicubic, antialiased) so the short side is the model's `image_size`,
    centre-cropped to a square — CLIP's own preprocessing — and normalised with the mean/std of
    the directory's `preprocessor_config.json` (the OpenAI constants when there is none).
    """

    part = "vision"

    def __init__(self, pretrained: str, freeze: bool = True, out_dim: int | None = None):
        super().__init__(pretrained, freeze, out_dim)
        self.vision_model, self.visual_projection = self.clip.vision_model, self.clip.visual_projection
        self.image_size = int(self.clip.config.vision_config.image_size)
        self._warned_upsampling = False
        mean, std = _image_stats(Path(self.model_dir))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1), persistent=False)
        self._setup_freeze()

    def _clip_modules(self):
        return [self.vision_model, self.visual_projection]

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 → normalised (B, 3, S, S) float."""
        x = images.to(self.mean.device).permute(0, 3, 1, 2).float().div(255.0)
        s = self.image_size
        h, w = x.shape[-2:]
        if (h, w) != (s, s):
            if min(h, w) < s and not self._warned_upsampling:
                self._warned_upsampling = True
                log.warning("CLIP upsamples %dx%d images to its %d px input: decode them at %d "
                            "(dataset.image_size=%d; the default follows encoder.image_size)", h, w, s, s, s)
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
            top, left = (nh - s) // 2, (nw - s) // 2
            x = x[..., top:top + s, left:left + s]
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.pixel_values(images)
        with self._clip_context():
            # The submodules directly, not CLIPModel.get_image_features: in transformers 5 that
            # returns a BaseModelOutputWithPooling (the embedding is its .pooler_output).
            pooled = self.vision_model(pixel_values=pixels).pooler_output
            emb = self.visual_projection(pooled)
        return self._head(emb)


class CLIPTextTower(_CLIPTower):
    """CLIP text transformer + text projection.

    `prepare` returns a (N, max_length) LongTensor of CLIP token ids, padded with the
    tokenizer's pad token (`<|endoftext|>` for OpenAI CLIP) and truncated to `max_length`
    (capped at the model's `max_position_embeddings`).  No attention mask is kept: CLIP's text
    transformer is causal and pools at the EOS token, so the padding after it cannot change the
    embedding (OpenAI's CLIP uses no mask either).  `forward` drops the columns past the last
    EOS of the batch, which changes nothing but the cost.
    """

    part = "text"

    def __init__(self, pretrained: str, freeze: bool = True, out_dim: int | None = None, max_length: int = 77):
        super().__init__(pretrained, freeze, out_dim)
        self.text_model, self.text_projection = self.clip.text_model, self.clip.text_projection
        self.max_length = min(int(max_length), int(self.clip.config.text_config.max_position_embeddings))
        # Not named `tokenizer`: the pipeline saves a text tower's `tokenizer` with tokenizers' `.save()`.
        self.clip_tokenizer = _load_tokenizer(self.model_dir, self.pretrained)
        self._setup_freeze()

    def _clip_modules(self):
        return [self.text_model, self.text_projection]

    @torch.no_grad()
    def prepare(self, texts: list[str], fit_texts: list[str] | None = None) -> torch.Tensor:
        enc = self.clip_tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                                  return_tensors="pt")
        return enc["input_ids"].long()

    def _eos_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Where CLIPTextModel pools (the same rule as its forward)."""
        eos = self.text_model.eos_token_id
        if eos == 2:  # legacy configs: the EOS is the highest id
            return ids.argmax(dim=-1)
        return (ids == eos).int().argmax(dim=-1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.text_projection.weight.device).long()
        if ids.shape[0]:
            ids = ids[:, : int(self._eos_positions(ids).max()) + 1]
        with self._clip_context():
            pooled = self.text_model(input_ids=ids).pooler_output
            emb = self.text_projection(pooled)
        return self._head(emb)


def _image_stats(model_dir: Path):
    """image_mean / image_std of the saved image processor (read as JSON: transformers 5's
    CLIPImageProcessor needs torchvision), else the OpenAI constants."""
    cfg = model_dir / "preprocessor_config.json"
    if cfg.is_file():
        try:
            d = json.loads(cfg.read_text())
            if d.get("image_mean") is not None and d.get("image_std") is not None:
                return d["image_mean"], d["image_std"]
        except (OSError, ValueError):
            log.warning("unreadable %s; using the OpenAI CLIP mean/std", cfg)
    return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


__all__ = ["CLIPImageTower", "CLIPTextTower", "resolve_pretrained"]
