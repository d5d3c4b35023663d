"""genretr.heap (issue 18): glibc's malloc started at the thresholds its dynamic rule climbs to, unless the user
set malloc up, asked for glibc's start, or runs another allocator."""
from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys

import pytest

from genretr import heap

PROBE = """
import ctypes, sys
from genretr.heap import malloc_at_ceiling
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype = Info, ctypes.c_void_p
set_ = malloc_at_ceiling() if sys.argv[1] == "set" else None
before = libc.mallinfo2().hblkhd
block = libc.malloc(16 * 2**20)
print(set_, libc.mallinfo2().hblkhd - before >= 16 * 2**20)
"""


def _has_mallinfo2() -> bool:
    try:
        return platform.libc_ver()[0] == "glibc" and hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _has_mallinfo2(), reason="glibc >= 2.33 (mallinfo2) only")
@pytest.mark.parametrize("how, env, expected", [
    ("plain", {}, "None True"),  # glibc's start: a 16 MiB block is mmapped (fresh pages each time)
    ("set", {}, "True False"),  # at the ceiling: it comes from the heap, whose freed top is kept
    ("set", {"MALLOC_TRIM_THRESHOLD_": "131072"}, "False True"),  # the user's own setting is left alone
    ("set", {"GENRETR_MALLOC": "glibc"}, "False True")])  # and glibc's start on request
def test_malloc_starts_at_the_thresholds_glibc_climbs_to(how, env, expected):
    clean = {k: v for k, v in os.environ.items()
             if k not in (*heap.MALLOC_ENV, "GENRETR_MALLOC", "GLIBC_TUNABLES", "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", PROBE, how], env={**clean, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == expected


@pytest.mark.parametrize("env, why", [({"GENRETR_MALLOC": "glibc"}, "GENRETR_MALLOC=glibc"),
                                      ({"MALLOC_MMAP_MAX_": "0"}, "MALLOC_MMAP_MAX_ is set"),
                                      ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "GLIBC_TUNABLES sets malloc"),
                                      ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "another allocator")])
def test_malloc_iswhy_left_alone_where_someone_else_set_it(env, why, monkeypatch):
    for k in (*heap.MALLOC_ENV, "GENRETR_MALLOC", "GLIBC_TUNABLES", "LD_PRELOAD"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert why in heap.why_left_alone()


def test_every_entry_point_sets_it():
    """`genretr.run`, `genretr.search`, `genretr.add` and the benches call it before their work."""
    from pathlib import Path

    root = Path(heap.__file__).parent
    for module in ("run.py", "search.py", "add.py", "bench/__main__.py"):
        assert "malloc_at_ceiling()" in (root / module).read_text(), module
