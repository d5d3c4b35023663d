"""Queries in another language (SSID Sec. IV-F, Table IV): the model trains on English captions only and
is evaluated with the same queries translated.

``eval.query_texts=FILE`` names a TSV of ``query id <TAB> text`` lines (UTF-8; ``#`` lines are comments).
Only the queries it lists are evaluated, with its text in place of theirs; a prefix-mode decoder reads
the translated text embedded by the run's own encoder, a token-input one its words, an MLLM the text.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from genretr.data.schema import Query
from genretr.data.textfile import text_lines
from genretr.errors import DataError


def load_query_texts(path: str | Path) -> dict[str, str]:
    """{query id: text} from the TSV; a malformed line is a `DataError` naming the file and line."""
    path = str(path)
    out: dict[str, str] = {}
    for n, line in text_lines(path, "eval.query_texts"):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise DataError(path, f"line {n}", "expected 'query id<TAB>text'")
        qid = parts[0].strip()
        if qid in out:
            raise DataError(path, f"line {n}", f"query {qid} is listed twice")
        out[qid] = parts[1].strip()
    if not out:
        raise DataError(path, None, "no queries")
    return out


def translated(queries: list[Query], texts: dict[str, str]) -> list[Query]:
    """The queries `texts` lists, with its text; those it does not list are left out."""
    return [replace(q, text=texts[q.id]) for q in queries if q.id in texts]
