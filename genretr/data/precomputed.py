"""`dataset=precomputed`: items given as feature vectors, queried by their captions — the way
CART feeds ImageBind audio and video features (CART Sec. 3.2.1, App. C: 1024-d ImageBind
embeddings of Clotho / AudioCaps audio and MSR-VTT / MSVD video, queried by their captions).

Inputs (nothing is downloaded; any encoder's features work, ImageBind is the paper's):

- `features`: the item vectors, either `.npy` (n, d) float plus `ids` (a text file, one item
  id per line, row order), or `.pt` holding `{"item_ids": [str], "embeddings": (n, d)}`.
- `captions`: jsonl, one caption a line: `{"item_id": ..., "caption": ..., "split": ...}`.
  An item's split is the split of its captions; items without captions are left out.
- `caption_features` (optional): `.npy` (number of caption lines, d), the same encoder's
  text embeddings of the captions, row i for line i — query vectors in the items' space.

Items have the configured modality ("audio" → task t2a, "video" → task t2v), no image and no
text; their vectors are `RetrievalDataset.item_vectors` (item id → (d,) float32, L2-normalised
unless `normalize: false`), caption vectors `query_vectors` (query id → (d,)).  Each split's
pool is its items; each caption is one query whose relevant item is its own (captions of the test
splits only give an empty train split, so given vectors are evaluated without one).  Bad input
(shape mismatch, unknown item id, NaN or infinite values, ...) raises `DataError` naming
the file and the entry.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from genretr.data.schema import AUDIO, INSTRUCTIONS, VIDEO, Item, Query, RetrievalDataset, Split
from genretr.data.textfile import one_line, read_jsonl, text_lines
from genretr.errors import DataError, GenretrError

log = logging.getLogger(__name__)
TASK_OF = {AUDIO: "t2a", VIDEO: "t2v"}


def _matrix(path: str, array, what: str) -> np.ndarray:
    """A finite 2-D float32 matrix, or a DataError naming the file."""
    try:
        m = np.asarray(array.numpy() if isinstance(array, torch.Tensor) else array, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(path, what, f"not a numeric array: {one_line(e)}") from None
    if m.ndim != 2 or 0 in m.shape:
        raise DataError(path, what, f"expected a non-empty (n, d) array, got shape {m.shape}")
    return m


def _read_ids(path: str) -> list[str]:
    ids = [line.strip() for _, line in text_lines(path, "item ids, one a line, for a .npy features file")]
    while ids and not ids[-1]:
        ids.pop()
    for n, i in enumerate(ids, start=1):
        if not i:
            raise DataError(path, f"line {n}", "empty item id")
    return ids


def load_features(path: str, ids_path: str | None) -> tuple[list[str], np.ndarray]:
    """(item ids, (n, d) float32) from `.npy` + ids file, or from a `.pt` dict."""
    if not os.path.isfile(path):
        raise DataError(path, None, "file not found (see conf/dataset/precomputed.yaml; nothing is downloaded)")
    ext = os.path.splitext(path)[1]
    if ext == ".npy":
        if not ids_path:
            raise GenretrError("dataset.ids is required with a .npy features file (one item id per line)")
        try:
            m = _matrix(path, np.load(path, allow_pickle=False), "embeddings")
        except (OSError, ValueError) as e:
            raise DataError(path, None, f"cannot read .npy: {one_line(e)}") from None
        ids, ids_where = _read_ids(ids_path), ids_path
    elif ext == ".pt":
        if ids_path:
            raise GenretrError("dataset.ids is only for .npy features; a .pt file holds its own 'item_ids'")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a bad file
            raise DataError(path, None, f"cannot read .pt: {one_line(e)}") from None
        if not isinstance(data, dict) or "item_ids" not in data or "embeddings" not in data:
            raise DataError(path, None, "expected a dict with 'item_ids' (list of str) and 'embeddings' (n, d)")
        ids, ids_where = data["item_ids"], path
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, str) and i.strip() for i in ids):
            raise DataError(path, "item_ids", "not a list of non-empty strings")
        ids, m = [i.strip() for i in ids], _matrix(path, data["embeddings"], "embeddings")
    else:
        raise DataError(path, None, f"unsupported features file {ext!r}; expected .npy (+ ids) or .pt")
    if len(ids) != len(m):
        raise DataError(ids_where, None, f"{len(ids)} item ids but {len(m)} rows in {path}")
    seen = set()
    for n, i in enumerate(ids):
        if i in seen:
            raise DataError(ids_where, f"item {n} ({i})", f"duplicate item id {i!r}")
        seen.add(i)
    return ids, m


def _check_rows(path: str, m: np.ndarray, labels, normalize: bool) -> np.ndarray:
    """NaN / infinite / zero rows are errors naming the row; optionally L2-normalise."""
    bad = ~np.isfinite(m).all(axis=1)
    if bad.any():
        n = int(np.flatnonzero(bad)[0])
        raise DataError(path, labels(n), "NaN or infinite values in the vector")
    if normalize:
        norms = np.linalg.norm(m, axis=1, keepdims=True)
        if (norms == 0).any():
            raise DataError(path, labels(int(np.flatnonzero(norms[:, 0] == 0)[0])), "zero vector cannot be normalised")
        m = m / norms
    return m.astype(np.float32)


def read_captions(path: str, known: set[str]) -> list[tuple[str, str, str, str]]:
    """(line label, item id, caption, split) per non-blank line of the captions jsonl."""
    rows, split_of = [], {}
    for where, raw in read_jsonl(path, "see conf/dataset/precomputed.yaml"):
        for key in ("item_id", "caption", "split"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise DataError(path, where, f"missing or empty '{key}'")
        iid, text, split = raw["item_id"].strip(), raw["caption"].strip(), raw["split"].strip()
        if iid not in known:
            raise DataError(path, where, f"unknown item id {iid!r} (not in the features file)")
        if split_of.setdefault(iid, (split, where))[0] != split:
            first, at = split_of[iid]
            raise DataError(path, where, f"item {iid!r} is in split {split!r} here but {first!r} at {at}")
        rows.append((where, iid, text, split))
    if not rows:
        raise DataError(path, None, "no captions")
    return rows


def build_precomputed(features: str, captions: str, modality: str = AUDIO, ids: str | None = None,
                      caption_features: str | None = None, normalize: bool = True, name: str = "precomputed",
                      max_items_per_split: int | None = None) -> RetrievalDataset:
    """Precomputed item vectors + captions → a RetrievalDataset of task t2a (audio) or t2v (video)."""
    if modality not in TASK_OF:
        raise GenretrError(f"dataset.modality must be one of {', '.join(TASK_OF)}, got {modality!r}")
    if max_items_per_split is not None and int(max_items_per_split) < 1:
        raise GenretrError(f"dataset.max_items_per_split must be >= 1 or null, got {max_items_per_split}")
    task, features, captions = TASK_OF[modality], str(features), str(captions)
    item_ids, vecs = load_features(features, str(ids) if ids else None)
    vecs = _check_rows(features, vecs, lambda n: f"row {n} (item_id={item_ids[n]})", normalize)
    rows = read_captions(captions, set(item_ids))
    cap_vecs = None
    if caption_features:
        path = str(caption_features)
        try:
            cap_vecs = _matrix(path, np.load(path, allow_pickle=False), "embeddings")
        except FileNotFoundError:
            raise DataError(path, None, "file not found") from None
        except (OSError, ValueError) as e:
            raise DataError(path, None, f"cannot read .npy: {one_line(e)}") from None
        if cap_vecs.shape != (len(rows), vecs.shape[1]):
            raise DataError(path, None, f"shape {cap_vecs.shape} does not match {len(rows)} captions in {captions} "
                                        f"× the items' dimension {vecs.shape[1]}")
        cap_vecs = _check_rows(path, cap_vecs, lambda n: f"row {n} ({captions} {rows[n][0]})", normalize)

    limit = None if max_items_per_split is None else int(max_items_per_split)
    row_of = {iid: n for n, iid in enumerate(item_ids)}
    splits: dict[str, Split] = {}
    items, item_vectors, query_vectors, n_caps = {}, {}, {}, {}
    for k, (_, iid, text, split) in enumerate(rows):
        s = splits.setdefault(split, Split(pools={task: []}))
        if iid not in items:
            if limit is not None and len(s.pools[task]) >= limit:
                continue
            items[iid] = Item(iid, modality)
            item_vectors[iid] = vecs[row_of[iid]]
            s.pools[task].append(iid)
        j = n_caps[iid] = n_caps.get(iid, -1) + 1
        q = Query(f"{task}/{iid}/cap{j}", task, (iid,), INSTRUCTIONS[task], text=text)
        s.queries.append(q)
        if cap_vecs is not None:
            query_vectors[q.id] = cap_vecs[k]
    splits.setdefault("train", Split(pools={task: []}))
    if len(items) < len(item_ids):
        log.info("%s: %d of %d feature rows have no caption (or are past max_items_per_split) and are left out",
                 name, len(item_ids) - len(items), len(item_ids))
    return RetrievalDataset(name, np.zeros((0, 0, 0, 3), np.uint8), items, splits, {}, item_vectors,
                            query_vectors if cap_vecs is not None else None)
