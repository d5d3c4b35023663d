"""`dataset=mbeir` on bad input: one line naming the file and the entry, and UniIR's qrels checked against the
query files — genretr/data/mbeir.py, on test_mbeir.py's tiny M-BEIR tree."""
from __future__ import annotations

import numpy as np
import pytest

from genretr.data.mbeir import build_mbeir
from genretr.errors import DataError, GenretrError
from tests.data.test_mbeir import B, C, COCO_I2T, COCO_T2I, OVEN, TRAIN, TSV, UNION, WEBQA, qrels_file, qrels_lines, \
    tree


# ------------------------------------------------------------------ bad input: one line naming file and entry


def _edit(path, k, **fields):
    """Set fields of entry k of a jsonl (KeyError: remove the field)."""
    def edit(tree):
        tree.entries[path][k].update(fields)
        for key in [key for key, v in fields.items() if v is KeyError]:
            del tree.entries[path][k][key]
        tree.write()
    return edit


def _raw_line(path, text, at=1):
    """Insert a raw line before line `at` (0-based) of a jsonl."""
    def edit(tree):
        lines = (tree.root / path).read_text().splitlines(keepends=True)
        lines.insert(at, text + "\n")
        (tree.root / path).write_text("".join(lines))
    return edit


def _raw_bytes(path, data: bytes, at=1):
    """Insert a line of raw bytes before line `at` (0-based) of a file."""
    def edit(tree):
        lines = (tree.root / path).read_bytes().splitlines(keepends=True)
        lines.insert(at, data + b"\n")
        (tree.root / path).write_bytes(b"".join(lines))
    return edit


BAD = {
    "query line not UTF-8": (_raw_bytes(COCO_T2I[0], b'{"qid": "caf\xe9"}'), COCO_T2I[0], "line 2",
                             "not UTF-8 text (byte 13 of the line is e9)"),
    "pool line not UTF-8": (_raw_bytes(COCO_I2T[1], b"\xff", 0), COCO_I2T[1], "line 1", "not UTF-8 text"),
    "malformed json": (_raw_line(COCO_T2I[0], '{"qid": "9:9", '), COCO_T2I[0], "line 2", "malformed JSON"),
    "not an object": (_raw_line(COCO_T2I[1], "[1, 2]", 0), COCO_T2I[1], "line 1", "not a JSON object"),
    "missing qid": (_edit(COCO_T2I[0], 1, qid=KeyError), COCO_T2I[0], "line 2", "'qid'"),
    "missing task_id": (_edit(COCO_T2I[0], 0, task_id=KeyError), COCO_T2I[0], "line 1", "'task_id'"),
    "unknown task_id": (_edit(COCO_T2I[0], 0, task_id=5), COCO_T2I[0], "line 1", "unknown task_id 5"),
    "task_id vs modality": (_edit(COCO_I2T[0], 1, task_id=0), COCO_I2T[0], "line 2", "does not fit task_id"),
    "missing query text": (_edit(COCO_T2I[0], 1, query_txt=None), COCO_T2I[0], "line 2", "'query_txt'"),
    "missing positives": (_edit(WEBQA[0], 0, pos_cand_list=[]), WEBQA[0], "line 1", "'pos_cand_list'"),
    "unknown query modality": (_edit(COCO_T2I[0], 0, query_modality="audio"), COCO_T2I[0], "line 1",
                               "unknown query_modality 'audio'"),
    "unknown candidate modality": (_edit(COCO_I2T[1], 2, modality="video"), COCO_I2T[1], "line 3",
                                   "unknown modality 'video'"),
    "missing did": (_edit(COCO_I2T[1], 1, did=KeyError), COCO_I2T[1], "line 2", "'did'"),
    "image candidate without path": (_edit(COCO_T2I[1], 1, img_path=""), COCO_T2I[1], "line 2", "'img_path'"),
    "positive not in pool": (_edit(COCO_T2I[0], 1, pos_cand_list=["9:77"]), COCO_T2I[0], "line 2",
                             "positive candidate '9:77' is not in the pool"),
    "positive of the wrong modality": (_edit(TRAIN[0], 0, pos_cand_list=["9:102"]), TRAIN[0], "line 1",
                                       "is 'text', but t2i retrieves 'image'"),
    "no positive of its dataset": (_edit(OVEN[0], 0, pos_cand_list=["6:9"]), OVEN[0], "line 1",
                                   "no positive candidate from the query's dataset '5'"),
    "duplicate qid": (_edit(COCO_T2I[0], 1, qid="9:1"), COCO_T2I[0], "line 2", "duplicate qid '9:1'"),
    "duplicate did": (_edit(COCO_I2T[1], 2, did="9:11"), COCO_I2T[1], "line 3", "duplicate did '9:11'"),
    "missing image": (lambda tree: (tree.root / C).unlink(), COCO_T2I[1], "line 3 (did=9:3)", "image file not found"),
    "missing query image": (_edit(OVEN[0], 0, query_img_path="mbeir_images/gone.jpg"), OVEN[0], "line 1",
                            "image file not found"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_file_and_entry(tree, case):
    edit, path, entry, problem = BAD[case]
    edit(tree)
    with pytest.raises(DataError) as err:
        tree.build()
    msg = str(err.value)
    assert "\n" not in msg and err.value.path == str(tree.root / path), msg
    assert f"[{entry}" in msg and problem in msg, msg


def test_conflicting_did_across_pool_files(tree):
    tree.entries[UNION][0]["txt"] = "changed"
    tree.entries[UNION][0]["modality"] = "image,text"
    tree.write()
    with pytest.raises(DataError, match=r"mbeir_union_test_cand_pool.jsonl \[line 1 \(did=9:1\)\]: did '9:1' differs"):
        tree.build()


def test_positive_missing_from_the_universal_pool(tree):
    tree.entries[UNION] = [c for c in tree.entries[UNION] if c["did"] != "9:13"]
    tree.write()
    with pytest.raises(DataError, match=r"mbeir_mscoco_task3_test.jsonl \[line 2 \(qid=9:4\)\]: .*universal pool"):
        tree.build()


def test_undecodable_image(tree):
    (tree.root / B).write_bytes(b"not a jpeg at all")
    ds = tree.build()  # listed, not decoded: the dataset stage decodes into its artifact
    with pytest.raises(DataError, match=r"task0_test_cand_pool.jsonl \[line 2 \(did=9:2\)\]: cannot decode image"):
        np.asarray(ds.images)


@pytest.mark.parametrize("row, problem", [
    (["text", "image", "MSCOCO"], "at least one prompt"),
    (["text", "audio", "X", "9", "Find it."], "unknown modality 'audio' in column 2"),
])
def test_bad_instruction_rows(tree, row, problem):
    tree.tsv.append(row)
    tree.write()
    with pytest.raises(DataError, match=rf"query_instructions.tsv \[line {len(tree.tsv)}\]: .*{problem}"):
        tree.build()


def test_instruction_row_not_utf8(tree):
    _raw_bytes(TSV, b"text\timage\tMSCOCO\t9\tFind the caf\xe9.", at=2)(tree)
    with pytest.raises(DataError, match=r"query_instructions.tsv \[line 3\]: not UTF-8 text"):
        tree.build()


def test_query_without_an_instruction(tree):
    tree.tsv = [r for r in tree.tsv if r[3] != "2"]
    tree.write()
    with pytest.raises(DataError, match=r"mbeir_webqa_task2_test.jsonl \[line 1 \(qid=2:5\)\]: no instruction for "
                                        r"dataset 2, text -> image,text"):
        tree.build()


def test_missing_files(tree):
    (tree.root / OVEN[0]).unlink()
    with pytest.raises(DataError, match="mbeir_oven_task6_test.jsonl: file not found"):
        tree.build()
    with pytest.raises(DataError, match="nope.tsv: file not found"):
        tree.build(instructions="nope.tsv")


@pytest.mark.parametrize("kw, problem", [
    ({"splits": {"test": []}}, "non-empty list"),
    ({"splits": {"test": [{"queries": COCO_T2I[0]}]}}, "non-empty list"),
    ({"universal": {"val": UNION}}, "not in dataset.splits"),
    ({"max_pool_size": 0}, "max_pool_size"),
    ({"splits": {"test": [{"queries": COCO_T2I[0], "pool": COCO_T2I[1], "qrel": "x.txt"}]}}, "non-empty list"),
    ({"splits": {"test": [{"queries": COCO_T2I[0], "pool": COCO_T2I[1], "qrels": 5}]}}, "qrels=5 is not a file"),
])
def test_bad_config(tree, kw, problem):
    args = {"root": tree.root, "splits": {"test": [{"queries": COCO_T2I[0], "pool": COCO_T2I[1]}]}, **kw}
    with pytest.raises(GenretrError, match=problem):
        build_mbeir(**args)


# ------------------------------------------------------------------ qrels: UniIR's relevance judgements, checked


def write_qrels(tree, *sources):
    """M-BEIR's qrels next to each source's query file, as UniIR generates them from the query entries."""
    for queries, _ in sources:
        tree.qrels[qrels_file(queries)] = qrels_lines(tree.entries[queries])
    tree.write()


def test_qrels_next_to_the_query_files_are_read_and_agree(tree):
    plain = tree.build()
    write_qrels(tree, COCO_T2I, COCO_I2T, OVEN, TRAIN)
    assert (tree.root / "qrels/test/mbeir_oven_task6_test_qrels.txt").read_text() == "5:1 0 5:7 1 6\n5:1 0 6:9 1 6\n"
    # UniIR's load_qrel: relevance 0 is no judgement of relevance; the 4-field TREC form reads too
    tree.qrels[qrels_file(WEBQA[0])] = ["2:5 0 2:1 0 2", "2:5   0  2:2 1"]
    tree.write()
    ds = tree.build()
    assert ds.splits == plain.splits
    assert ds.queries("test", "it2t")[0].relevant == ("5:7",)  # the qrels judge 6:9 too, as pos_cand_list lists it


def _qrels_edit(queries, edit):
    """Write the qrels of `queries`, edited in place by `edit(lines)`."""
    def apply(tree):
        lines = qrels_lines(tree.entries[queries])
        edit(lines)
        tree.qrels[qrels_file(queries)] = lines
        tree.write()
    return apply


QRELS_BAD = {
    "relevant not a positive": (_qrels_edit(COCO_T2I[0], lambda ls: ls.append("9:2 0 9:3 1 0")), "qrels",
                                "line 2 (qid=9:2)", "disagrees with pos_cand_list of"),
    "positive not relevant": (_qrels_edit(OVEN[0], lambda ls: ls.pop()), "qrels", "line 1 (qid=5:1)",
                              "it lists 6:9, not relevant in the qrels"),
    "relevance 0": (_qrels_edit(COCO_I2T[0], lambda ls: ls.__setitem__(1, "9:4 0 9:13 0 3")), "qrels",
                    "line 2 (qid=9:4)", "it lists 9:13, not relevant"),
    "task_id": (_qrels_edit(COCO_T2I[0], lambda ls: ls.__setitem__(0, "9:1 0 9:1 1 3")), "qrels", "line 1 (qid=9:1)",
                "task_id 3 differs from task_id 0 of"),
    "task_id within the qrels": (_qrels_edit(COCO_T2I[0], lambda ls: ls.append("9:1 0 9:3 0 3")), "qrels",
                                 "line 3 (qid=9:1)", "task_id 3 differs from task_id 0 on line 1"),
    "qid without a query": (_qrels_edit(COCO_T2I[0], lambda ls: ls.append("9:99 0 9:3 1 0")), "qrels",
                            "line 3 (qid=9:99)", "no query with this qid in"),
    "query without a qid": (_qrels_edit(COCO_T2I[0], lambda ls: ls.pop()), COCO_T2I[0], "line 2 (qid=9:2)",
                            "qid '9:2' has no line in the qrels"),
    "malformed line": (_qrels_edit(COCO_T2I[0], lambda ls: ls.insert(1, "9:2 0 9:2")), "qrels", "line 2",
                       "expected 'qid 0 did relevance [task_id]'"),
    "relevance not a number": (_qrels_edit(COCO_T2I[0], lambda ls: ls.__setitem__(0, "9:1 0 9:1 yes 0")), "qrels",
                               "line 1 (qid=9:1)", "must be integers"),
}


@pytest.mark.parametrize("case", list(QRELS_BAD))
def test_qrels_disagreement_names_file_and_qid(tree, case):
    edit, path, entry, problem = QRELS_BAD[case]
    edit(tree)
    with pytest.raises(DataError) as err:
        tree.build()
    msg = str(err.value)
    if path == "qrels":  # the qrels file of the edited query file
        path = next(iter(tree.qrels))
    assert "\n" not in msg and err.value.path == str(tree.root / path), msg
    assert f"[{entry}]: " in msg and problem in msg, msg


def test_qrels_named_or_turned_off_per_source(tree):
    tree.qrels["elsewhere/coco_t2i.txt"] = qrels_lines(tree.entries[COCO_T2I[0]])
    tree.qrels[qrels_file(COCO_T2I[0])] = qrels_lines(tree.entries[COCO_T2I[0]])[:1]  # the standard file lacks 9:2
    tree.write()
    with pytest.raises(DataError, match="qid '9:2' has no line in the qrels"):
        tree.build(test=(COCO_T2I,), universal=False)
    named = tree.build(test=((*COCO_T2I, "elsewhere/coco_t2i.txt"),), universal=False)
    assert [q.relevant for q in named.queries("test", "t2i")] == [("9:1",), ("9:2",)]
    tree.build(test=((*COCO_T2I, None),), universal=False)  # null: no qrels read
    with pytest.raises(DataError, match=r"nope_qrels.txt: file not found"):
        tree.build(test=((*COCO_T2I, "nope_qrels.txt"),), universal=False)


def test_qrels_line_not_utf8(tree):
    write_qrels(tree, COCO_T2I)
    _raw_bytes(qrels_file(COCO_T2I[0]), b"9:1 0 9:\xe9 1 0")(tree)
    name = qrels_file(COCO_T2I[0]).rsplit("/", 1)[1]
    with pytest.raises(DataError, match=rf"{name} \[line 2\]: not UTF-8 text \(byte 9 of the line is e9\)"):
        tree.build()


def test_qrels_of_a_query_file_read_in_part(tree):
    """max_queries_per_file reads the first queries: the qrels of the others are not missing queries."""
    _qrels_edit(COCO_T2I[0], lambda ls: ls.append("9:99 0 9:3 1 0"))(tree)
    ds = tree.build(test=(COCO_T2I,), universal=False, max_queries_per_file=1)
    assert [q.id for q in ds.queries("test", "t2i")] == ["test/t2i/9:1"]
