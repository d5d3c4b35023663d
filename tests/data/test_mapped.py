"""Rows of memory-mapped arrays read through the file (genretr.data.mapped): the same values as indexing, and no
page of the file left resident (issue 16's peak RSS)."""
from __future__ import annotations

import numpy as np
import pytest

from genretr.data import mapped
from genretr.hardware import status_mb


@pytest.fixture
def saved(tmp_path):
    array = np.random.default_rng(0).normal(size=(5000, 24)).astype(np.float32)
    np.save(tmp_path / "a.npy", array)
    return array, np.load(tmp_path / "a.npy", mmap_mode="c")


def test_only_a_whole_mapped_array_is_read_through_its_file(saved, tmp_path):
    array, on_disk = saved
    assert mapped.is_mapped(on_disk)
    assert not mapped.is_mapped(array) and not mapped.is_mapped(on_disk[3:]) and not mapped.is_mapped(on_disk.T)
    np.save(tmp_path / "f.npy", np.asfortranarray(array))
    fortran = np.load(tmp_path / "f.npy", mmap_mode="c")
    assert not mapped.is_mapped(fortran) and np.array_equal(mapped.gather_rows(fortran, [7, 3]), array[[7, 3]])


def test_images_read_through_their_file_equal_the_pixels(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", pixels)
    on_disk = np.load(tmp_path / "images.npy", mmap_mode="c")
    assert np.array_equal(np.concatenate(list(mapped.row_blocks(on_disk, 16))), pixels)
    assert np.array_equal(mapped.gather_rows(on_disk, [49, 0, 49]), pixels[[49, 0, 49]])
    assert np.array_equal(mapped.read_rows(on_disk, 3, 4)[0], pixels[3])


@pytest.mark.parametrize("block_bytes", [mapped.BLOCK_BYTES, 1000])
def test_gathered_and_read_rows_equal_indexing(saved, monkeypatch, block_bytes):
    monkeypatch.setattr(mapped, "BLOCK_BYTES", block_bytes)  # many blocks, and a run split across blocks
    array, on_disk = saved
    g = np.random.default_rng(1)
    for rows in (g.permutation(5000), g.integers(0, 5000, 300), np.array([4999, 0, 7, 7, 2500]),
                 np.arange(100, 4000), np.array([], dtype=np.int64)):
        assert np.array_equal(mapped.gather_rows(on_disk, rows), array[rows])
        assert np.array_equal(mapped.gather_rows(on_disk[1:], rows[rows < 4999]), array[1:][rows[rows < 4999]])
    assert np.array_equal(mapped.read_rows(on_disk, 4990, 6000), array[4990:])
    assert np.array_equal(np.concatenate(list(mapped.row_blocks(on_disk, 777))), array)
    with pytest.raises(IndexError, match="a.npy"):
        mapped.gather_rows(on_disk, [5000])


@pytest.mark.skipif(status_mb("RssFile") is None, reason="reads RssFile from /proc/self/status (Linux)")
def test_a_pass_over_a_mapped_file_leaves_its_pages_out_of_the_process(tmp_path):
    array = np.ones(((64 << 20) // 1024, 256), dtype=np.float32)  # 64 MB of 1 KB rows
    np.save(tmp_path / "big.npy", array)
    del array
    on_disk = np.load(tmp_path / "big.npy", mmap_mode="c")
    before = status_mb("RssFile")
    total = sum(float(block[:, 0].sum()) for block in mapped.row_blocks(on_disk, 4096))
    gathered = mapped.gather_rows(on_disk, np.arange(len(on_disk))[::-1])
    assert total == len(on_disk) and gathered.shape == on_disk.shape
    assert status_mb("RssFile") - before < 8  # read through the file: its 64 MB stay in the page cache
    float(np.asarray(on_disk[:, 0]).sum())  # indexing the map itself touches every page
    assert status_mb("RssFile") - before > 48  # (the measure sees it: the check above can fail)
