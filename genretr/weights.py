"""Where a pretrained checkpoint lies on this machine, without loading it: a local directory (as written by
`save_pretrained` or `hf download --local-dir`) or a hub id's snapshot already in the Hugging Face cache.
Nothing is ever fetched.  Each model words its own `MissingWeightsError` from the problem found here (what to
download, which option to set), so a run can check its weights before any stage runs.
"""
from __future__ import annotations

from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


class CheckpointNotFound(Exception):
    """Why `pretrained` names no usable checkpoint here (one clause, for a model's missing-weights message)."""


def looks_like_hub_id(name: str) -> bool:
    """`owner/name` or `name`: what the HF cache could hold (a path-like string is never a hub id)."""
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name


def local_checkpoint(pretrained: str) -> Path:
    """The directory holding `pretrained`'s config.json and weights: the path itself, or the hub id's snapshot
    in the local HF cache.  Raises `CheckpointNotFound` naming what is missing."""
    pretrained = str(pretrained)
    path = Path(pretrained).expanduser()
    if path.is_dir():
        where = f"directory {str(path)!r}"
    elif path.exists() or not looks_like_hub_id(pretrained):
        raise CheckpointNotFound(f"{pretrained!r} is not a model directory")
    else:
        from huggingface_hub import constants, snapshot_download

        try:  # local_files_only: a cache lookup, never a network call
            path = Path(snapshot_download(pretrained, local_files_only=True))
        except Exception:  # LocalEntryNotFoundError, HFValidationError, ...
            raise CheckpointNotFound(f"{pretrained!r} is neither a local directory nor in the Hugging Face cache "
                                     f"{constants.HF_HUB_CACHE}") from None
        where = f"the cached snapshot {str(path)!r} of {pretrained!r}"
    if not (path / "config.json").is_file():
        raise CheckpointNotFound(f"{where} has no config.json")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise CheckpointNotFound(f"{where} has no model.safetensors / pytorch_model.bin")
    return path.resolve()


def load_error_cause(e: Exception) -> str:
    """The first line of a loader's error (its type's name when it has no message), for a one-line error."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


__all__ = ["CheckpointNotFound", "WEIGHT_FILES", "load_error_cause", "local_checkpoint", "looks_like_hub_id"]
