"""The captioner a run saved beside its identifiers, for new items without text (issue 19: `genretr.add`):
semantic IDs' captioner and SSID's describer."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from genretr.data.captioning import item_images
from genretr.errors import GenretrError


def saved_captioner(ctx, folder: str, items, todo: list[int], x: np.ndarray, who: str):
    """(captioner, inputs) for the new items `todo` (rows of `items`) that have no text (issue 19): the captioner
    the run saved in its identify artifact (`ctx.workdir / folder`), and what it reads, decided by the saved
    captioner: the items' images (`ctx.images`, by `Item.image`) for a pixel captioner, else their embeddings."""
    if ctx.load_captioner is None:
        raise GenretrError(f"{who}: the IdentifierContext has no load_captioner to caption {len(todo)} new images "
                           "(genretr.add gives genretr.captioner's)")
    path = Path(ctx.workdir) / folder
    if not (path / "captioner.json").is_file():
        raise GenretrError(f"{who}: new item '{items[todo[0]].id}' has no text, and the run saved no captioner "
                           f"({path} is missing: every item it identified had a caption, or an older genretr made "
                           "the run): give each new image a text, or retrain to add it")
    captioner = ctx.load_captioner(path)
    new = [items[i] for i in todo]
    return captioner, (item_images(ctx.images, new, who) if getattr(captioner, "pixels", False) else x[todo])
