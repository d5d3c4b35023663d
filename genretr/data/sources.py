"""The files a dataset config names exist: checked by `genretr.run` before any stage runs.

`SOURCES` maps an adapter's `_target_` to the inputs its builder reads first, {config key: (path, kind)}, kind
"file" or "directory", from the builder's own arguments.  `check_sources` stops a run whose input is absent with
one line naming the path and the config key, seconds after the command instead of after Lightning's import and the
stages before the dataset's.  The lists live here, not in the adapters, so that the dataset stage's code
fingerprint (and so its cached artifacts) does not depend on them.  A dataset not listed is not checked here.
"""
from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from genretr.errors import DataError

EXISTS = {"file": os.path.isfile, "directory": os.path.isdir}


def karpathy_sources(json_path: str, image_root: str = "", **_) -> dict[str, tuple[str, str]]:
    """`build_karpathy`: the split JSON and the image root (an empty root: the JSON's paths as they are)."""
    out = {"json_path": (str(json_path), "file")}
    if image_root:
        out["image_root"] = (str(image_root), "directory")
    return out


def mbeir_sources(root: str, splits=None, universal=None, instructions=None, **_) -> dict[str, tuple[str, str]]:
    """`build_mbeir`: every query, pool and named qrels file (M-BEIR's own qrels file of a query file is read only
    where it exists), the instructions and the universal pools, joined to `root` as the builder joins them (the
    root itself when some name is relative).  A malformed `splits` is left to the builder's one-line error."""
    items = lambda d: d.items() if isinstance(d, dict) else ()  # noqa: E731
    names = {"instructions": instructions} if instructions else {}
    for split, sources in items(splits):
        for i, src in enumerate(sources if isinstance(sources, list) else ()):
            for key in ("queries", "pool", "qrels"):
                if isinstance(src, dict) and isinstance(src.get(key), str) and src[key]:
                    names[f"splits.{split}[{i}].{key}"] = src[key]
    names.update({f"universal.{split}": pool for split, pool in items(universal) if pool})
    root_entry = {"root": (str(root), "directory")} if any(not os.path.isabs(str(n)) for n in names.values()) else {}
    return {**root_entry, **{k: (os.path.join(str(root), str(n)), "file") for k, n in names.items()}}


def precomputed_sources(features: str, captions: str, ids: str | None = None, caption_features: str | None = None,
                        **_) -> dict[str, tuple[str, str]]:
    """`build_precomputed`: features, captions, the ids beside `.npy` features (a `.pt` file holds its own) and
    the caption features when given."""
    out = {"features": (str(features), "file"), "captions": (str(captions), "file")}
    if ids and str(features).endswith(".npy"):
        out["ids"] = (str(ids), "file")
    if caption_features:
        out["caption_features"] = (str(caption_features), "file")
    return out


SOURCES = {"genretr.data.karpathy.build_karpathy": karpathy_sources, "genretr.data.mbeir.build_mbeir": mbeir_sources,
           "genretr.data.precomputed.build_precomputed": precomputed_sources}


def check_sources(dataset_cfg: DictConfig | None) -> None:
    """Raise `DataError` on the first input of `dataset_cfg` that is not on this machine."""
    sources = SOURCES.get(str(dataset_cfg.get("_target_") or "")) if dataset_cfg is not None else None
    if sources is None:
        return
    options = OmegaConf.to_container(dataset_cfg, resolve=True)
    options.pop("_target_", None)
    for key, (path, kind) in sources(**options).items():
        if not EXISTS[kind](path):
            there = "; a file is there" if kind == "directory" and os.path.isfile(path) else \
                "; a directory is there" if kind == "file" and os.path.isdir(path) else ""
            raise DataError(path, None, f"{kind} not found (dataset.{key}{there}; nothing is downloaded: see the "
                                        "dataset's config for where to get it, or set GENRETR_DATA)")
