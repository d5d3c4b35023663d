"""Rows of memory-mapped arrays (the dataset's `images.npy`, the encode artifact's vectors) read through the file.

Reading a mapped array touches its pages, and every page read stays in the process's resident set until the
mapping goes: a pass over a million captions' vectors or 200k images would leave the whole file resident (issue
16's peak RSS).  Read here, the rows come from the file a block at a time into ordinary memory (the OS page
cache keeps the file, outside the process), so a pass holds one block and the rows it returns.  Arrays that are
not mapped (built in memory, or a view of a mapped one) are indexed as they are.
"""
from __future__ import annotations

import mmap
import os
import weakref
from collections.abc import Iterator

import numpy as np

BLOCK_BYTES = 64 << 20  # read from the file at a time


def is_mapped(array) -> bool:
    """Whether `array` is a whole C-ordered array memory-mapped from a file (np.load(mmap_mode=…)): its rows can
    be read from the file at its offset; a view of one (a slice, a transpose) cannot and is indexed instead, as is
    every array where the OS has no `preadv` (Windows, older macOS)."""
    return (hasattr(os, "preadv") and isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap)
            and array.flags.c_contiguous and bool(getattr(array, "filename", None)))


def _row_bytes(array: np.ndarray) -> int:
    return int(array.strides[0])  # C-ordered: a row's bytes


_DESCRIPTORS: dict[int, int] = {}  # id(mapped array) -> its file, opened once and closed with the array


def _descriptor(array: np.ndarray) -> int:
    """The open file of mapped `array` (opened at its first read, kept until the array is collected)."""
    fd = _DESCRIPTORS.get(id(array))
    if fd is None:
        fd = _DESCRIPTORS[id(array)] = os.open(array.filename, os.O_RDONLY)
        weakref.finalize(array, lambda key=id(array): os.close(_DESCRIPTORS.pop(key)))
    return fd


def _read_into(out: np.ndarray, array: np.ndarray, start: int) -> np.ndarray:
    """Fill C-ordered `out` with rows start..start+len(out) of mapped `array`, read from its file."""
    view, fd = memoryview(out).cast("B"), _descriptor(array)
    offset, done = array.offset + start * _row_bytes(array), 0
    while done < len(view):  # a read may return fewer bytes than asked
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise OSError(f"{array.filename}: the file ends before row {start + len(out)}")
        done += got
    return out


def _read(array: np.ndarray, start: int, count: int) -> np.ndarray:
    """Rows start..start+count of mapped `array`, read from its file into a new array."""
    return _read_into(np.empty((count, *array.shape[1:]), dtype=array.dtype), array, start)


def read_rows(array: np.ndarray, start: int, stop: int) -> np.ndarray:
    """`array[start:stop]` as a new array; of a mapped array, read from its file without mapping its pages."""
    stop = min(stop, len(array))
    if not is_mapped(array):
        return np.array(array[start:stop])
    return _read(array, start, max(0, stop - start))


def row_blocks(array: np.ndarray, rows_per_block: int) -> Iterator[np.ndarray]:
    """Consecutive blocks of `rows_per_block` rows of `array` (`read_rows`), in order."""
    for start in range(0, len(array), rows_per_block):
        yield read_rows(array, start, start + rows_per_block)


def gather_rows(array: np.ndarray, rows) -> np.ndarray:
    """`array[rows]` (rows in any order, repeats allowed); of a mapped array, read from its file in row order:
    runs of nearby rows one read each (at most `BLOCK_BYTES`), so that no page of the file stays resident and a
    few scattered rows cost a few small reads."""
    rows = np.asarray(rows, dtype=np.int64)
    if not is_mapped(array):
        return np.asarray(array[rows])
    if len(rows) and (rows.min() < 0 or rows.max() >= len(array)):
        raise IndexError(f"gather_rows: a row outside 0..{len(array) - 1} of {array.filename}")
    out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    per_block = max(1, BLOCK_BYTES // max(1, _row_bytes(array)))
    gap = max(1, (64 << 10) // max(1, _row_bytes(array)))  # rows closer than 64 KB apart share a read
    starts = (np.flatnonzero(np.diff(ordered) > gap) + 1).tolist()
    for lo, end in zip([0, *starts], [*starts, len(ordered)]):
        if end - lo == 1:  # a row alone (a scattered lookup): read straight into its place
            _read_into(out[order[lo]:order[lo] + 1], array, int(ordered[lo]))
            continue
        while lo < end:  # a run of nearby rows, a block of at most `per_block` rows at a time
            first = int(ordered[lo])
            hi = end if ordered[end - 1] < first + per_block else \
                lo + int(np.searchsorted(ordered[lo:end], first + per_block, side="left"))
            block = _read(array, first, int(ordered[hi - 1]) + 1 - first)
            out[order[lo:hi]] = block[ordered[lo:hi] - first]
            lo = hi
    return out
