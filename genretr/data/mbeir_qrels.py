"""M-BEIR qrels (genretr/data/mbeir.py): the relevance judgements UniIR evaluates with, checked against the
query files' `pos_cand_list`.

M-BEIR ships, next to every query file `query/<dir>/<name>.jsonl`, a TREC qrels file
`qrels/<dir>/<name>_qrels.txt` (UniIR's mbeir_data_generator.py writes one line per positive of each
query, `qid 0 did 1 task_id`; UniIR's retriever reads them with `load_qrel`):

    9:1 0 9:1 1 0          qid, iteration (ignored), did, relevance (> 0: relevant), task_id

The 4-field TREC form (no task_id) is read too.  A query's relevant dids in the qrels must be exactly
its `pos_cand_list` (both before UniIR's same-dataset filter), and the qrels' task_id its `task_id`.
"""
from __future__ import annotations

import os

from genretr.data import textfile
from genretr.errors import DataError

FORMAT = "expected 'qid 0 did relevance [task_id]', whitespace-separated"


def standard_path(queries: str) -> str | None:
    """M-BEIR's qrels file of a root-relative query file: query/<dir>/<name>.jsonl → qrels/<dir>/<name>_qrels.txt"""
    rel = os.path.normpath(str(queries)).replace(os.sep, "/")
    if rel.startswith("query/") and rel.endswith(".jsonl"):
        return "qrels/" + rel[len("query/"):-len(".jsonl")] + "_qrels.txt"
    return None


def _show(dids) -> str:
    dids = sorted(dids)
    more = f" (+{len(dids) - 3} more)" if len(dids) > 3 else ""
    return ", ".join(dids[:3]) + more


class Qrels:
    """One qrels file, by qid: [its first line, relevant dids, task_id or None, the line that gave the task_id]."""

    def __init__(self, path: str):
        self.path, self.by_qid = path, {}
        for n, line in textfile.text_lines(path, "the source's qrels; `qrels: null` reads none"):
            parts = line.split()
            if not parts:
                continue
            if len(parts) not in (4, 5):
                raise DataError(path, f"line {n}", FORMAT)
            qid, did = parts[0], parts[2]
            try:
                relevance, task = int(parts[3]), int(parts[4]) if len(parts) == 5 else None
            except ValueError:
                raise DataError(path, f"line {n} (qid={qid})",
                                f"relevance and task_id must be integers; {FORMAT}") from None
            entry = self.by_qid.setdefault(qid, [n, set(), None, None])
            if task is not None and entry[2] is None:
                entry[2:] = task, n
            elif task is not None and task != entry[2]:
                raise DataError(path, f"line {n} (qid={qid})", f"task_id {task} differs from task_id "
                                                                 f"{entry[2]} on line {entry[3]}")
            if relevance > 0:
                entry[1].add(did)

    def check(self, qid: str, task_id: int, positives: tuple[str, ...], where: tuple[str, str]) -> None:
        """The query (at `where`) agrees with its qrels lines."""
        if qid not in self.by_qid:
            raise DataError(*where, f"qid {qid!r} has no line in the qrels {self.path}")
        line, relevant, task, _ = self.by_qid[qid]
        at = (self.path, f"line {line} (qid={qid})")
        if task is not None and task != task_id:
            raise DataError(*at, f"task_id {task} differs from task_id {task_id} of {where[0]} [{where[1]}]")
        extra, missing = relevant.difference(positives), set(positives).difference(relevant)
        if extra or missing:
            says = ([f"the qrels list {_show(extra)}, not in it"] if extra else []) + \
                   ([f"it lists {_show(missing)}, not relevant in the qrels"] if missing else [])
            raise DataError(*at, f"disagrees with pos_cand_list of {where[0]} [{where[1]}]: {'; '.join(says)}")

    def check_all_asked(self, asked: set[str], queries: str) -> None:
        """Every qid of the qrels is a query of the file (only when the whole file was read)."""
        for qid, (line, *_) in self.by_qid.items():
            if qid not in asked:
                raise DataError(self.path, f"line {line} (qid={qid})", f"no query with this qid in {queries}")
