"""genretr/data/textfile.py: the user's text files line by line (the readers' own bad-input tests are in
test_mbeir_bad_input.py, test_precomputed.py, test_inspect_run.py and evaluation/test_multilingual.py)."""
import pytest

from genretr.data.textfile import read_jsonl, text_lines
from genretr.errors import DataError


def test_line_ends_and_a_byte_order_mark(tmp_path):
    f = tmp_path / "ids.txt"
    f.write_bytes("\ufeffa\r\nb\u2028c\n\nd".encode())  # CRLF, a U+2028 inside a line, a blank line, no last "\n"
    assert list(text_lines(str(f), "ids")) == [(1, "a"), (2, "b\u2028c"), (3, ""), (4, "d")]


def test_read_jsonl_skips_blank_lines_and_stops_at_its_limit(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_bytes(b'{"i": 1}\r\n\n{"i": 2}\n\xff not read\n')
    assert list(read_jsonl(str(f), "queries", limit=2)) == [("line 1", {"i": 1}), ("line 3", {"i": 2})]
    assert list(read_jsonl(str(f), "queries", limit=0)) == []
    with pytest.raises(DataError, match=r"q.jsonl \[line 4\]: not UTF-8 text \(byte 1 of the line is ff\)"):
        list(read_jsonl(str(f), "queries"))


def test_a_missing_file_says_what_it_is(tmp_path):
    with pytest.raises(DataError, match=r"nope.jsonl: file not found \(the queries; see the config\)$"):
        list(read_jsonl(str(tmp_path / "nope.jsonl"), "the queries; see the config"))
    with pytest.raises(DataError, match=r": cannot read: .*Is a directory"):
        list(text_lines(str(tmp_path), "a folder"))
