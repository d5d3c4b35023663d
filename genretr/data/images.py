"""Images that stay on disk until they are needed (issue 16): a dataset builder lists the files, and the
dataset stage decodes them once, in order and a file at a time, into the artifact's memory-mapped
`images.npy` (`write_images`), so no run holds every pixel in memory.  `ImageFiles` reads like the
(N, S, S, 3) uint8 array it stands for: an index decodes those images only."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import track

from genretr.errors import DataError

DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def load_image(path: str, size: int) -> np.ndarray:
    """Decode to RGB, resize the shorter side to `size`, centre-crop to size×size (CLIP-style)."""
    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale still >= size (fast)
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8)


@dataclass
class ImageFiles:
    """`paths[i]` decoded at `size` is image i; `where[i]` is (file, entry) of the metadata line naming it, for
    the one-line DataError of an undecodable file."""
    paths: list[str]
    size: int
    where: list[tuple[str, str | None]]
    name: str = "images"
    dtype = np.dtype(np.uint8)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.size, self.size, 3)

    def __len__(self) -> int:
        return len(self.paths)

    def decode(self, i: int) -> np.ndarray:
        try:
            return load_image(self.paths[i], self.size)
        except DECODE_ERRORS as err:
            raise DataError(*self.where[i], f"cannot decode image {self.paths[i]}: {' '.join(str(err).split())}") \
                from None

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.decode(int(index) % len(self) if index < 0 else int(index))
        rows = np.arange(len(self))[index]
        out = np.empty((len(rows), self.size, self.size, 3), np.uint8)
        for n, i in enumerate(rows):
            out[n] = self.decode(int(i))
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def write_images(images, path: Path, progress_name: str = "images") -> None:
    """`images` (an array, or `ImageFiles` decoded one at a time) as one uint8 .npy at `path`; a file that does
    not decode leaves no .npy behind."""
    if not isinstance(images, ImageFiles):
        np.save(path, np.ascontiguousarray(images, dtype=np.uint8))
        return
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=images.shape)
    try:
        for i in track(range(len(images)), description=f"decoding {progress_name} images", total=len(images)):
            out[i] = images.decode(i)
        out.flush()
    except BaseException:
        del out
        Path(path).unlink(missing_ok=True)  # nothing half-written
        raise
