"""The text files users hand genretr (JSON lines, TSV, qrels, id lists), read line by line.

Every problem is one `DataError` naming the file and, where there is one, the line: a missing file (with a
hint of what the file is), an unreadable one, a line that is not UTF-8, malformed JSON, a JSON line that is
no object.  Lines are split at "\\n" only (a U+2028 inside a caption does not end its line).
"""
from __future__ import annotations

import json
from collections.abc import Iterator

from genretr.errors import DataError


def one_line(text: object) -> str:
    """`text` with its whitespace runs (newlines included) collapsed to single spaces."""
    return " ".join(str(text).split())


def text_lines(path: str, missing: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, the line without its end) per line of the UTF-8 file at `path` (a leading byte-order
    mark dropped).

    `missing`: what the file is and what to do about it, said when it does not exist."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(path, None, f"file not found ({missing})") from None
    except OSError as e:
        raise DataError(path, None, f"cannot read: {one_line(e)}") from None
    with f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, f"line {n}", f"not UTF-8 text (byte {e.start + 1} of the line is "
                                                   f"{raw[e.start:e.start + 1].hex()})") from None
            line = line.rstrip("\r\n")
            yield n, line.removeprefix("\ufeff") if n == 1 else line


def read_jsonl(path: str, missing: str, limit: int | None = None) -> Iterator[tuple[str, dict]]:
    """("line N", object) per non-blank line of a JSON-lines file, the first `limit` of them if set."""
    if limit is not None and limit < 1:
        return
    kept = 0
    for n, line in text_lines(path, missing):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, f"line {n}", f"malformed JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(raw, dict):
            raise DataError(path, f"line {n}", "entry is not a JSON object")
        yield f"line {n}", raw
        kept += 1
        if kept == limit:  # the lines after it are not read
            return
