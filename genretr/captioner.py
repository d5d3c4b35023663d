"""A small captioner: item embedding → caption, trained on the train split's (image, captions).

GRACE trains "an image caption model based on the training set" and captions the test images
with it, so that their semantic identifiers never see test captions (Sec. 3.3); it predicts
pseudo-queries for the test images the same way (Appendix A).  Here the captioner is a
`T5PrefixDecoder` (the encoder vector read through prefix vectors) over a word-level
vocabulary built from the training captions (`<pad>`=0, `</s>`=1, `<unk>`=2), fitted with a
plain CPU/GPU Lightning `Trainer` (no logger, no checkpoints), and decoded greedily or by
beam search with `genretr.decoding.engine.beam_search` (no trie).

`input: pixels` (conf/captioner/pixels.yaml) reads the image itself instead of its embedding
(`genretr.backbones.image_prefix.ImagePrefixDecoder`, a small CNN trained with the caption loss): the offline
vision stand-in for an MLLM that sees the image (SSID Sec. III-E).  Its inputs are (N, H, W, 3) uint8 images.
"""
from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset, default_collate

from genretr.artifacts import plain_dict
from genretr.backbones.t5_prefix import T5PrefixDecoder
from genretr.data.captioning import item_images, join_words, wants_pixels, words  # noqa: F401 (also this module's API)
from genretr.errors import GenretrError
from genretr.identifiers.base import EOS, PAD, SPECIAL_TOKENS
from genretr.training import small_fit

UNK = 2
VOCAB_SPECIALS = [*SPECIAL_TOKENS, "<unk>"]
class Captioner:
    """A trained caption model and its vocabulary; `describe(vecs)` captions embeddings."""

    def __init__(self, model: T5PrefixDecoder, vocab: list[str], max_len: int = 32, num_beams: int = 1,
                 length_penalty: float = 1.0):
        if vocab[: len(VOCAB_SPECIALS)] != VOCAB_SPECIALS:
            raise GenretrError(f"captioner vocabulary must start with {VOCAB_SPECIALS}, got {vocab[:3]}")
        self.model, self.vocab, self.max_len = model.eval(), list(vocab), int(max_len)
        self.pixels = isinstance(model, _image_decoder())
        self.num_beams, self.length_penalty = int(num_beams), float(length_penalty)
        self.index = {w: i for i, w in enumerate(self.vocab)}

    def encode(self, caption: str) -> list[int]:
        """Token ids of a caption, truncated to `max_len` tokens with the closing EOS."""
        ids = [self.index.get(w, UNK) for w in words(caption)][: self.max_len - 1]
        return ids + [EOS]

    @torch.no_grad()
    def describe_words(self, vecs, num_beams: int | None = None, batch_size: int = 256) -> list[list[str]]:
        """The best caption of each vector as a word list (beam search, `num_beams=1`: greedy), up to its `</s>`;
        `<pad>` is no word and is left out (an under-trained captioner may still give it mass)."""
        from genretr.decoding.engine import beam_search

        z = _inputs(vecs, self.pixels, self.model.hparams.input_dim)
        if len(z) == 0:
            return []
        z = z.to(self.model.device)
        res = beam_search(self.model, z, None, num_beams=num_beams or self.num_beams,
                          length_penalty=self.length_penalty, max_len=self.max_len, batch_size=batch_size)
        best = res.tokens[:, 0].tolist()
        return [[self.vocab[t] for t in seq[: seq.index(EOS) if EOS in seq else len(seq)] if t != PAD] for seq in best]

    def describe(self, vecs, num_beams: int | None = None, batch_size: int = 256) -> list[str]:
        """The best caption of each vector as a string."""
        return [join_words(ws) for ws in self.describe_words(vecs, num_beams, batch_size)]

    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), path / "captioner.pt")
        meta = {"input": "pixels" if self.pixels else "embedding", "vocab": self.vocab, "max_len": self.max_len,
                "num_beams": self.num_beams, "length_penalty": self.length_penalty, "model": dict(self.model.hparams)}
        (path / "captioner.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: Path) -> "Captioner":
        path = Path(path)
        if not (path / "captioner.json").is_file():
            raise GenretrError(f"{path}: no saved captioner (captioner.json) there")
        meta = json.loads((path / "captioner.json").read_text())
        model = (_image_decoder() if meta.get("input") == "pixels" else T5PrefixDecoder)(**meta["model"])
        model.load_state_dict(torch.load(path / "captioner.pt", map_location="cpu"))
        return cls(model, meta["vocab"], meta["max_len"], meta["num_beams"], meta["length_penalty"])


def build_vocab(captions: list[str], min_count: int = 1) -> list[str]:
    """`<pad>`, `</s>`, `<unk>`, then the words seen at least `min_count` times, most frequent first."""
    counts = Counter(w for c in captions for w in words(c))
    kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return VOCAB_SPECIALS + kept


def _decoder_batch(rows) -> dict:
    """The backbone's batch layout: a dict with the input vector, its target's vector and the labels."""
    z, labels = default_collate(rows)
    labels = labels[:, : int((labels != PAD).sum(1).max())]  # no all-PAD columns
    return {"z": z, "target_z": z, "labels": labels}


def _image_decoder():
    from genretr.backbones.image_prefix import ImagePrefixDecoder

    return ImagePrefixDecoder


def _inputs(x, pixels: bool, dim: int | None = None) -> torch.Tensor:
    """Checked captioner inputs: (n, dim) float vectors, or (n, H, W, 3) uint8 images with `pixels`."""
    if pixels:
        z = torch.as_tensor(np.asarray(x))
        if z.ndim != 4 or z.shape[-1] != 3 or z.dtype != torch.uint8:
            raise GenretrError(f"captioner (input: pixels) expects (n, H, W, 3) uint8 images, got {tuple(z.shape)} "
                               f"{z.dtype}")
        return z
    z = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if z.ndim != 2 or (dim is not None and z.shape[1] != dim):
        raise GenretrError(f"captioner expects (n, {dim or 'd'}) vectors, got {tuple(z.shape)}")
    return z


def fit_captioner(vecs, captions_per_vec: list[list[str]], cfg: Mapping, seed: int = 0,
                  progress: bool = False, device="cpu") -> Captioner:
    """Train a captioner on every (input, caption) pair on `device` (where it then describes); `cfg` is
    conf/captioner/*.yaml.  The inputs are item vectors, or images with `input: pixels`."""
    cfg = plain_dict(cfg)
    pixels = wants_pixels(cfg)
    vecs = _inputs(vecs, pixels)
    if len(vecs) != len(captions_per_vec):
        raise GenretrError(f"fit_captioner: {tuple(vecs.shape)} inputs for {len(captions_per_vec)} caption lists")
    pairs = [(i, c) for i, caps in enumerate(captions_per_vec) for c in caps if words(c)]
    if not pairs:
        raise GenretrError("fit_captioner: no non-empty training captions")
    torch.manual_seed(seed)
    vocab = build_vocab([c for _, c in pairs], int(cfg.get("vocab_min_count", 1)))
    if pixels:
        model = _image_decoder()(vocab_size=len(vocab), **cfg["model"], **cfg.get("cnn", {}))
    else:
        model = T5PrefixDecoder(vocab_size=len(vocab), input_dim=vecs.shape[1], **cfg["model"])
    cap = Captioner(model, vocab, int(cfg.get("max_len", 32)), int(cfg.get("num_beams", 1)),
                    float(cfg.get("length_penalty", 1.0)))
    labels = torch.full((len(pairs), cap.max_len), PAD, dtype=torch.long)
    for row, (_, c) in enumerate(pairs):
        ids = cap.encode(c)
        labels[row, : len(ids)] = torch.tensor(ids)
    z = vecs[[i for i, _ in pairs]]
    fit = cfg["fit"]
    loader = DataLoader(TensorDataset(z, labels), batch_size=int(fit["batch_size"]), shuffle=True,
                        generator=torch.Generator().manual_seed(seed), collate_fn=_decoder_batch)
    model.train()
    with warnings.catch_warnings():  # every pair trains the captioner: the decoder's validation_step has no use here
        warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`")
        small_fit(model, loader, int(fit["max_epochs"]), progress, device=device)
    cap.model = model.to(device).eval()
    return cap
