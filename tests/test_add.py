"""genretr.add's reading of new items (the additions themselves: tests/test_inspect_run.py)."""
import numpy as np
import pytest
from PIL import Image

from genretr.add import read_items
from genretr.errors import DataError


def test_a_folder_of_images_with_captions_beside_them(tmp_path):
    for stem in "abcd":
        Image.fromarray(np.full((8, 8, 3), 40 * "abcd".index(stem), np.uint8)).save(tmp_path / f"{stem}.png")
    (tmp_path / "a.txt").write_bytes("\ufeffa red circle\r\nat the top\r\n".encode())  # BOM, CRLF
    (tmp_path / "b.txt").write_text(" \n")  # blank: an empty caption, as before
    items = read_items(tmp_path, 4)
    assert [(i, text) for i, text, _, _ in items] == [("a", "a red circle\nat the top"), ("b", ""), ("c", None),
                                                        ("d", None)]
    assert items[2][2].shape == (4, 4, 3) and items[2][3] == str(tmp_path / "c.png")
    (tmp_path / "d.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match=r"d.txt \[line 1\]: not UTF-8 text"):
        read_items(tmp_path, 4)
