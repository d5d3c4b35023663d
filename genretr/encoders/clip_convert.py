"""UniIR's CLIP-SF checkpoint (clip_sf_large.pth: GENIUS Sec. 4.1's encoder) as a CLIPModel dir for `encoder=clip`.

UniIR saves `{"model": CLIPScoreFusion.state_dict(), "optimizer": ..., "config": ...}`: OpenAI CLIP's keys under
`clip_model.`.  They are mapped onto transformers' CLIPModel of `base` (the HF CLIP of the same architecture) and
written, with base's tokenizer and image processor, to a directory that GENRETR_CLIP (or
`encoder.model.{image,text}_tower.pretrained`) reads:

    python -m genretr.encoders.clip_convert clip_sf_large.pth --base openai/clip-vit-large-patch14 --out DIR
"""
from __future__ import annotations

import argparse
import collections
import importlib
import shutil
import sys
import tempfile
import typing
import zipfile
from pathlib import Path

import torch

from genretr.encoders.clip import resolve_pretrained
from genretr.errors import GenretrError

# transformers CLIPModel name -> OpenAI CLIP name (prefixes end in "."); q/k/v are thirds of in_proj_*.
_HF_TO_OPENAI = [
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
    ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
    ("vision_model.pre_layrnorm.", "visual.ln_pre."), ("vision_model.post_layernorm.", "visual.ln_post."),
    ("vision_model.encoder.layers.", "visual.transformer.resblocks."), ("visual_projection.weight", "visual.proj"),
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("text_model.encoder.layers.", "transformer.resblocks."), ("text_model.final_layer_norm.", "ln_final."),
    ("text_projection.weight", "text_projection"), ("logit_scale", "logit_scale")]
_LAYER = [(".self_attn.out_proj.", ".attn.out_proj."), (".layer_norm1.", ".ln_1."), (".layer_norm2.", ".ln_2."),
          (".mlp.fc1.", ".mlp.c_fc."), (".mlp.fc2.", ".mlp.c_proj.")]
_QKV = {".self_attn.q_proj.": 0, ".self_attn.k_proj.": 1, ".self_attn.v_proj.": 2}
_TRANSPOSED = {"visual.proj", "text_projection"}      # OpenAI: x @ proj (width x embed); HF: Linear (embed x width)
_METADATA = {"input_resolution", "context_length", "vocab_size"}   # ints in OpenAI's JIT archives, not weights
_PROCESSOR_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json",
                    "preprocessor_config.json", "processor_config.json")
# What UniIR pickles next to the weights (its OmegaConf config), allowed to torch.load(weights_only=True).
_SAFE_CONFIG_GLOBALS = {"dictconfig": ["DictConfig"], "listconfig": ["ListConfig"], "base": ["ContainerMetadata",
                        "Metadata"], "nodes": ["AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode"]}


def _openai_name(hf: str) -> tuple[str, int | None] | None:
    """OpenAI CLIP's name for the HF parameter `hf`, and which third of it (q/k/v of in_proj) when split."""
    for hf_prefix, openai_prefix in _HF_TO_OPENAI:
        if hf == hf_prefix or (hf_prefix.endswith(".") and hf.startswith(hf_prefix)):
            name = openai_prefix + hf[len(hf_prefix):]
            for a, b in _LAYER:
                name = name.replace(a, b)
            for a, third in _QKV.items():
                if a in name:
                    return name.replace(a, ".attn.in_proj_"), third
            return name, None
    return None


def _load(checkpoint: Path, trust_pickle: bool) -> dict:
    if not checkpoint.is_file():
        raise GenretrError(f"{checkpoint}: no such checkpoint file")
    mmap = zipfile.is_zipfile(checkpoint)   # mapped: the optimizer state of a 5 GB checkpoint is never read
    try:
        if trust_pickle:
            return torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=mmap)
        safe = [collections.defaultdict, typing.Any, int, float, str, bool, dict, list]
        for module, names in _SAFE_CONFIG_GLOBALS.items():   # omegaconf: Hydra's dependency
            safe += [getattr(importlib.import_module(f"omegaconf.{module}"), n) for n in names]
        with torch.serialization.safe_globals(safe):
            return torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        what = " ".join(str(e).split())
        if "Weights only load failed" in what:
            blocked = what.split("GLOBAL ", 1)[1].split(" ")[0] if "GLOBAL " in what else "a non-tensor object"
            raise GenretrError(f"{checkpoint}: torch.load(weights_only=True) refuses it (it pickles {blocked}); if "
                               f"you trust the file's source, rerun with --trust-pickle") from None
        raise GenretrError(f"{checkpoint}: not a readable torch checkpoint ({what[:200]})") from None


def _state_dict(checkpoint: Path, obj) -> tuple[dict, str, dict]:
    """The OpenAI CLIP weights in `obj` (UniIR's {"model": sd} or a bare state dict), their key prefix and each
    weight's key in the checkpoint."""
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise GenretrError(f"{checkpoint}: no state dict of tensors in it (expected UniIR's {{'model': ...}})")
    prefix = ""
    for part in ("module.", "clip_model."):  # the wrappers' prefixes, stripped where most keys carry them
        if sum(k.startswith(prefix + part) for k in obj) > len(obj) / 2:
            prefix += part
    original = {(k[len(prefix):] if k.startswith(prefix) else k): k for k in obj}
    return {name: obj[k] for name, k in original.items()}, prefix, original


@torch.no_grad()
def convert_uniir_clip_sf(checkpoint: Path, base: str | Path, out: Path, trust_pickle: bool = False) -> Path:
    """Write `out`: CLIPModel(base's config) with the checkpoint's weights, plus base's tokenizer and processor."""
    from transformers import CLIPConfig, CLIPModel

    checkpoint, out = Path(checkpoint).expanduser(), Path(out).expanduser()
    base_dir = resolve_pretrained(str(base))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GenretrError(f"{out} already exists: remove it or pick another --out")
    weights, prefix, original = _state_dict(checkpoint, _load(checkpoint, trust_pickle))
    try:
        model = CLIPModel(CLIPConfig.from_pretrained(base_dir, local_files_only=True)).float()
    except (OSError, ValueError, TypeError) as e:
        raise GenretrError(f"{base_dir}: not a CLIP model directory ({' '.join(str(e).split())[:200]})") from None

    targets: dict[str, list[tuple[int | None, torch.Tensor]]] = {}   # OpenAI name -> (third, HF parameter)
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name.endswith("position_ids"):   # non-persistent buffers
            continue
        openai = _openai_name(name)
        if openai is None:
            raise GenretrError(f"{base_dir}: parameter {name!r} has no OpenAI CLIP counterpart: is it a CLIP ViT?")
        targets.setdefault(openai[0], []).append((openai[1], tensor))
    where = f"the base CLIP {base_dir}"
    hint = ("; convert against the HF CLIP of the checkpoint's architecture (--base openai/clip-vit-large-patch14 "
            "for CLIP-SF large, openai/clip-vit-base-patch32 for base)")
    for name, value in weights.items():
        if name in _METADATA:
            continue
        if name not in targets:
            raise GenretrError(f"{checkpoint}: key {original[name]!r} has no counterpart in {where}{hint}")
        parts = sorted(targets.pop(name), key=lambda t: t[0] or 0)
        want = tuple(parts[0][1].shape) if len(parts) == 1 else (sum(p.shape[0] for _, p in parts),
                                                                   *parts[0][1].shape[1:])
        want = tuple(reversed(want)) if name in _TRANSPOSED else want
        if tuple(value.shape) != want:
            raise GenretrError(f"{checkpoint}: key {original[name]!r} has shape {tuple(value.shape)} where {where} "
                               f"has {want}{hint}")
        value = value.t() if name in _TRANSPOSED else value
        for (_, param), piece in zip(parts, value.chunk(3) if len(parts) == 3 else [value]):
            param.copy_(piece)
    if targets:
        raise GenretrError(f"{checkpoint}: key {prefix + next(iter(targets))!r} is missing ({where} needs it){hint}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        for f in base_dir.iterdir():
            if f.name in _PROCESSOR_FILES or f.name.startswith("tokenizer"):
                shutil.copyfile(f, tmp / f.name)
        if out.is_dir():
            out.rmdir()   # empty (checked above)
        tmp.rename(out)
    except OSError as e:
        raise GenretrError(f"could not write {out}: {' '.join(str(e).split())}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genretr.encoders.clip_convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="UniIR's CLIP-SF checkpoint (clip_sf_large.pth)")
    parser.add_argument("--base", required=True, help="HF CLIP directory (or cached hub name) of the same architecture")
    parser.add_argument("--out", required=True, type=Path, help="directory to write (must not exist or be empty)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="torch.load(weights_only=False): runs the file's pickled code, for trusted files only")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()   # one line out, one line on error
    try:
        out = convert_uniir_clip_sf(args.checkpoint, args.base, args.out, trust_pickle=args.trust_pickle)
    except GenretrError as e:
        print(f"genretr: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}: use it with encoder=clip and GENRETR_CLIP={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
