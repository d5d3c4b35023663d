"""Add items to a finished run without retraining (issue 19):

    python -m genretr.add RUN_DIR ITEMS [--pool NAME ...]

ITEMS is a JSON-lines file, one item a line: {"id": ..., "image": PATH (relative to the file's folder),
"text": ...} with an image, a text or both; or a folder of images (the id is the file name's stem, the caption
the text of STEM.txt beside it, if there is one).  Each new item is embedded by the run's trained encoder and
given an identifier by the run's trained scheme (`assign`: GENIUS's quantizer, CART's centroids and RQ-VAE,
the structured IDs' k-means tree, the image tokens' codebooks, the semantic IDs' captioner, SSID's generator
with its describer); schemes whose identifiers mean nothing without training (numeric, string, atomic) refuse,
with the reason.  The items join the run's evaluation pools that hold items of their modality
(or `--pool`), in `RUN_DIR/added/` (`genretr.additions`): later `genretr.search` calls can return them, and
the run's cache and results are untouched.  Adding the same items again changes nothing; any other id that the
run already holds (in its corpus, or added with other content) is one line and exit 2, before anything is
written.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

from genretr.additions import Additions
from genretr.captioner import Captioner
from genretr.data.captioning import train_caption_texts, train_captions
from genretr.data.schema import IMAGE, PAIR, TEXT, Item
from genretr.data.textfile import one_line, read_jsonl, text_lines
from genretr.errors import DataError, GenretrError
from genretr.heap import malloc_at_ceiling
from genretr.identifiers.base import IdentifierContext, IdTable

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_items(path: Path, size) -> list[tuple[str, str | None, np.ndarray | None, str]]:
    """(id, text, image (size, size, 3) uint8, where) per new item of `path` (see the module doc); `size`: the
    images' side, or a function that gives it (asked at the first image: a run without pixels refuses)."""
    from genretr.data.images import DECODE_ERRORS, load_image

    def image(file: Path, where: str) -> np.ndarray:
        try:
            return load_image(str(file), size() if callable(size) else size)
        except DECODE_ERRORS as e:
            raise GenretrError(f"{where}: {file} is not a readable image ({one_line(e)})") from None

    path = Path(path)
    out = []
    if path.is_dir():
        for f in sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            caption = f.with_suffix(".txt")
            text = "\n".join(line for _, line in text_lines(str(caption), "the image's caption")).strip() \
                if caption.is_file() else None
            out.append((f.stem, text, image(f, str(f)), str(f)))
        if not out:
            raise GenretrError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it")
        return out
    if not path.is_file():
        raise GenretrError(f"{path}: no such file or folder")
    for line, entry in read_jsonl(str(path), "one JSON object a line: id, text and/or image"):
        where = f"{path} [{line}]"
        if not isinstance(entry.get("id"), str) or not entry["id"]:
            raise DataError(path, line, "an item needs a non-empty string \"id\"")
        text, file = entry.get("text"), entry.get("image")
        for key, value in (("text", text), ("image", file)):
            if value is not None and not isinstance(value, str):
                raise DataError(path, line, f"item {entry['id']!r}: \"{key}\" must be a string")
        if not text and not file:
            raise DataError(path, line, f"item {entry['id']!r} has neither \"image\" nor \"text\"")
        out.append((entry["id"], text or None, image(path.parent / file, where) if file else None, where))
    if not out:
        raise GenretrError(f"{path}: no items in it")
    return out


def add(run, entries, pools: list[str] | None = None) -> Additions:
    """`entries` (`read_items`) as new items of `run` (a `genretr.search.LoadedRun`): the additions made (empty
    when every entry was added before with the same content)."""
    from hydra.utils import get_class

    scheme = None
    if run.model is not None:  # a generative run: its scheme must assign identifiers to new items
        target = run.cfg.identifier._target_
        cls = get_class(target)
        if not hasattr(cls, "assign"):
            reason = getattr(cls, "cannot_add", "it has no way to identify items it was not built on")
            raise GenretrError(f"identifier {target.rsplit('.', 1)[-1]} cannot add items without retraining: {reason}")
        scheme = run.ctx.identifier_scheme()
    seen, fresh = set(), []
    for iid, text, img, where in entries:
        if iid in seen:
            raise GenretrError(f"{where}: item id {iid!r} appears twice")
        seen.add(iid)
        if iid in run.ds.items:
            if not run.same_as_added(iid, text, img):
                raise GenretrError(f"{where}: item id {iid!r} is already in the run's corpus")
            continue  # added before, unchanged: idempotent
        fresh.append((iid, text, img, where))
    if not fresh:
        return Additions()
    images = [img for _, _, img, _ in fresh if img is not None]
    pixels = np.stack(images) if images else None  # (new images, H, W, 3); Item.image is a row
    items = []
    for iid, text, img, _ in fresh:
        row = None if img is None else sum(1 for x in items if x.image is not None)
        items.append(Item(iid, PAIR if img is not None and text else (IMAGE if img is not None else TEXT), row, text))
    joined = {}
    for x in items:
        names = pools or run.pools_holding(x.modality)
        if not names:
            raise GenretrError(f"no evaluation pool of the run holds {x.modality} items ({x.id!r}); pass --pool")
        for name in names:
            if name not in run.pool_names():
                raise GenretrError(f"--pool {name}: the run searches {', '.join(run.pool_names())}")
            joined.setdefault(name, []).append(x.id)
    vectors = run.embed_new_items(items, pixels)
    table = None
    if scheme is not None:  # identifiers continue those of the run and of its earlier additions (unique tokens)
        held = run.identified if run.added.table is None else IdTable.joined([run.identified, run.added.table])
        ctx = IdentifierContext(workdir=run.identify_artifact(), seed=int(run.cfg.seed), device=run.ctx.device,
                                train_texts=train_caption_texts(run.ds), item_captions=train_captions(run.ds),
                                images=pixels, load_captioner=Captioner.load, pair_parts=run.new_item_parts(pixels))
        table = scheme.assign(items, vectors, ctx, held)
    return Additions(items, joined, pixels, vectors, table)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m genretr.add", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("items", help="a .jsonl of items or a folder of images")
    p.add_argument("--pool", action="append", help="a pool to add them to (default: those of their modality)")
    args = p.parse_args(argv)
    malloc_at_ceiling()  # as genretr.run has it
    from genretr.search import LoadedRun

    try:
        with contextlib.redirect_stdout(sys.stderr):
            run = LoadedRun(args.run_dir)
            entries = read_items(Path(args.items), lambda: run.image_size())
            new = add(run, entries, args.pool)
    except GenretrError as e:
        print(f"genretr: error: {e}", file=sys.stderr)
        return 2
    if not len(new):
        print(f"nothing to add: every item of {args.items} is already in {args.run_dir}")
        return 0
    run.added.extended(new).save(Path(args.run_dir))
    for x in new.items:
        ident = f"  id {new.table.text(x.id)}" if new.table is not None else ""
        print(f"added {x.id} ({x.modality}) to {', '.join(n for n, ids in new.pools.items() if x.id in ids)}{ident}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
