"""`dataset=flickr30k` and `dataset=coco`: the Karpathy split JSON (`dataset_flickr30k.json`,
`dataset_coco.json`) read into the shared schema (see `schema.py`), items and queries built
exactly as `shapes.py` builds them.

The JSON (Karpathy & Fei-Fei, "Deep Visual-Semantic Alignments", CVPR 2015) has a top-level
`images` list; each entry has `filename`, an optional `filepath` (COCO: `train2014`/`val2014`),
`split` in train/val/test/restval and `sentences`, each with a `raw` caption.  `restval`
images (COCO's 30k extra val2014 images) go to the split named by `restval_to`, or are
dropped when it is None.

Nothing is downloaded.  Every entry is validated first (cheap); the selected images stay files
(`genretr.data.images.ImageFiles`) until the dataset stage decodes them into its artifact, where an
undecodable one raises `DataError` naming the file and the entry, and nothing is written.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from genretr.data.images import ImageFiles, load_image  # noqa: F401 (load_image: this module's API)
from genretr.data.schema import INSTRUCTIONS, IMAGE, PAIR, TEXT, Item, Query, RetrievalDataset, Split
from genretr.data.textfile import one_line
from genretr.errors import DataError, GenretrError

SPLITS = ("train", "val", "test")
JSON_SPLITS = SPLITS + ("restval",)
TASKS = ("t2i", "i2t", "t2it")  # no it2i: these sets have no composed queries


@dataclass(frozen=True)
class Entry:
    """One validated `images[]` entry, already routed to its final split."""

    label: str  # e.g. "images[3] (filename=xyz.jpg)", used in error messages
    split: str
    filename: str
    path: str  # image file on disk
    captions: tuple[str, ...]


def _error(path: str, entry: str | None, problem: object) -> DataError:
    return DataError(path, entry, one_line(problem))


def load_json(json_path: str) -> list:
    """Read the JSON file and return its `images` list."""
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise _error(json_path, None, "file not found (see the comment in the dataset config for where "
                                      "to get it; nothing is downloaded)") from None
    except json.JSONDecodeError as e:
        raise _error(json_path, f"line {e.lineno}, column {e.colno}", f"malformed JSON: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise _error(json_path, None, f"cannot read: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise _error(json_path, "images", "missing top-level 'images' list")
    return data["images"]


def validate_entry(json_path: str, k: int, raw: object, image_root: str, restval_to: str | None) -> Entry | None:
    """Check one entry's fields; return it routed to its split (None: a dropped restval image)."""
    label = f"images[{k}]"
    if not isinstance(raw, dict):
        raise _error(json_path, label, "entry is not an object")
    filename = raw.get("filename")
    if not isinstance(filename, str) or not filename.strip():
        raise _error(json_path, label, "missing or empty 'filename'")
    label = f"images[{k}] (filename={filename})"
    for key in ("split", "sentences"):
        if key not in raw:
            raise _error(json_path, label, f"missing '{key}'")
    split = raw["split"]
    if split not in JSON_SPLITS:
        raise _error(json_path, label, f"unknown split {split!r}; expected one of {', '.join(JSON_SPLITS)}")
    sentences = raw["sentences"]
    if not isinstance(sentences, list):
        raise _error(json_path, label, "'sentences' is not a list")
    if not sentences:
        raise _error(json_path, label, "image has no sentences")
    captions = []
    for j, s in enumerate(sentences):
        text = s.get("raw") if isinstance(s, dict) else None
        if not isinstance(text, str):
            raise _error(json_path, f"{label} sentences[{j}]", "missing 'raw' caption")
        if not text.strip():
            raise _error(json_path, f"{label} sentences[{j}]", "empty or whitespace-only caption")
        captions.append(text.strip())
    if split == "restval":
        if restval_to is None:
            return None
        split = restval_to
    filepath = raw.get("filepath")
    if filepath is not None and not isinstance(filepath, str):
        raise _error(json_path, label, "'filepath' is not a string")
    path = os.path.join(image_root, filepath, filename) if filepath else os.path.join(image_root, filename)
    return Entry(label, split, filename, path, tuple(captions))


def select(json_path: str, image_root: str, restval_to: str | None,
           max_images_per_split: int | None) -> dict[str, list[Entry]]:
    """Validate every entry, route restval, keep the first `max_images_per_split` per split."""
    if restval_to is not None and restval_to not in SPLITS:
        raise GenretrError(f"dataset.restval_to must be one of {', '.join(SPLITS)} or null, got {restval_to!r}")
    if max_images_per_split is not None and int(max_images_per_split) < 1:
        raise GenretrError(f"dataset.max_images_per_split must be >= 1 or null, got {max_images_per_split}")
    by_split: dict[str, list[Entry]] = {s: [] for s in SPLITS}
    seen: dict[str, str] = {}
    for k, raw in enumerate(load_json(json_path)):
        e = validate_entry(json_path, k, raw, image_root, restval_to)
        if e is None:
            continue
        iid = f"{e.split}/{e.filename}"
        if iid in seen:
            raise _error(json_path, e.label, f"duplicate image id {iid!r} (also {seen[iid]})")
        seen[iid] = e.label
        by_split[e.split].append(e)
    if max_images_per_split is not None:
        by_split = {s: es[: int(max_images_per_split)] for s, es in by_split.items()}
    if not by_split["test"]:
        raise _error(json_path, None, "no images in the test split")
    for es in by_split.values():  # cheap existence check before the slow decode
        for e in es:
            if not os.path.isfile(e.path):
                raise _error(json_path, e.label, f"image file not found: {e.path}")
    return by_split


def build_karpathy(name: str, json_path: str, image_root: str, image_size: int = 64, restval_to: str | None = "train",
                   max_images_per_split: int | None = None) -> RetrievalDataset:
    """Flickr30K / MS-COCO (Karpathy splits): items are images, captions and image–caption pairs;
    tasks t2i, i2t, t2it (no it2i: these sets have no composed queries)."""
    json_path, image_root, size = str(json_path), str(image_root), int(image_size)
    by_split = select(json_path, image_root, restval_to, max_images_per_split)
    entries = [e for s in SPLITS for e in by_split[s]]
    # decoded when the dataset stage writes its artifact (genretr.data.images), never all in memory
    images = ImageFiles([e.path for e in entries], size, [(json_path, e.label) for e in entries], name)

    items: dict[str, Item] = {}
    splits: dict[str, Split] = {}
    captions: dict[int, list[str]] = {}
    img_index = 0
    for split in SPLITS:
        s = Split(pools={t: [] for t in TASKS})
        for e in by_split[split]:
            iid = f"{split}/{e.filename}"
            items[iid] = Item(iid, IMAGE, image=img_index)
            cap_ids = []
            for j, text in enumerate(e.captions):
                tid = f"{iid}/cap{j}"
                items[tid] = Item(tid, TEXT, text=text)
                cap_ids.append(tid)
                s.queries.append(Query(f"t2i/{tid}", "t2i", (iid,), INSTRUCTIONS["t2i"], text=text))
            captions[img_index] = cap_ids
            pid = f"{iid}/pair"
            items[pid] = Item(pid, PAIR, image=img_index, text=e.captions[0])
            for j, text in enumerate(e.captions[1:], start=1):
                s.queries.append(Query(f"t2it/{iid}/cap{j}", "t2it", (pid,), INSTRUCTIONS["t2it"], text=text))
            s.queries.append(Query(f"i2t/{iid}", "i2t", tuple(cap_ids), INSTRUCTIONS["i2t"], image=img_index))
            s.pools["t2i"].append(iid)
            s.pools["i2t"].extend(cap_ids)
            s.pools["t2it"].append(pid)
            img_index += 1
        splits[split] = s
    return RetrievalDataset(name, images, items, splits, captions)
