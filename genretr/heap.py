"""glibc's malloc set where a decoder search wants it (issue 18), by the entry points only: no stage imports this
module, so setting it re-keys no artifact (`genretr.fingerprint` hashes what the stages import)."""
from __future__ import annotations

import functools
import os

MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)
MMAP_THRESHOLD_CEILING = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit; its trim threshold then: twice


def why_left_alone() -> str | None:
    """Why the process's malloc is not ours to set, or None."""
    import platform

    if os.environ.get("GENRETR_MALLOC") == "glibc":
        return "GENRETR_MALLOC=glibc"
    if set_ := [k for k in MALLOC_ENV if k in os.environ]:
        return f"{set_[0]} is set"
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets malloc"
    if "malloc" in os.environ.get("LD_PRELOAD", ""):  # jemalloc, tcmalloc, mimalloc: another allocator
        return "LD_PRELOAD names another allocator"
    if platform.libc_ver()[0] != "glibc":
        return "not glibc"
    return None


@functools.lru_cache(maxsize=None)
def malloc_at_ceiling() -> bool:
    """Start glibc's malloc at the thresholds its own dynamic rule climbs to; True where it did.

    glibc serves a block over its mmap threshold (128 KiB at start) with `mmap` and returns a heap top over its
    trim threshold to the OS; each larger mmapped block freed raises the two, to its size and twice that, up to
    32 MiB and 64 MiB.  Below that ceiling, a decoder step's freed multi-MB activations go back to the OS and are
    faulted in again the next step: 256 CART-shaped queries in batches of 32 (beam 30, one thread, AVX2 EPYC, a
    process that had freed no large block) searched at 56-64 q/s, at 71-73 from the ceiling (64 GENIUS-shaped
    ones: 4.2 -> 4.7); training and peak RSS did not change.  Setting the two ends glibc's own adjustment, which
    cannot go higher.  Called once per process by the entry points (`genretr.run`, `genretr.search`,
    `genretr.add`, `python -m genretr.bench`); not where `why_left_alone` says why (the user's own malloc settings,
    `GENRETR_MALLOC=glibc`: glibc's start, as before; another allocator; not glibc)."""
    if why_left_alone() is not None:
        return False
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_CEILING)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_CEILING))
    except (OSError, AttributeError):
        return False
