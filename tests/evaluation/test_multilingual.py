"""Queries in another language (SSID Table IV): eval.query_texts."""
import json

import pytest

from genretr.data.schema import Query
from genretr.errors import DataError
from genretr.evaluation.multilingual import load_query_texts, translated
from genretr.pipeline import Pipeline


def test_load_and_translate(tmp_path):
    f = tmp_path / "fr.tsv"
    f.write_text("# French\nq1\tun cercle rouge\n\nq3\tun carré bleu\n", encoding="utf-8")
    texts = load_query_texts(f)
    assert texts == {"q1": "un cercle rouge", "q3": "un carré bleu"}
    qs = [Query(f"q{i}", "t2i", ("x",), text="english") for i in range(1, 4)]
    out = translated(qs, texts)
    assert [q.id for q in out] == ["q1", "q3"] and out[1].text == "un carré bleu" and out[0].relevant == ("x",)


@pytest.mark.parametrize("body,where", [("q1 no tab\n", "line 1"), ("q1\tx\nq1\ty\n", "line 2"),
                                        ("q1\t \n", "line 1"), ("# only a comment\n", "no queries"),
                                        (b"q1\tok\nq2\tun carr\xe9\n", r"line 2\]: not UTF-8 text")])
def test_bad_files_name_the_file_and_line(tmp_path, body, where):
    f = tmp_path / "bad.tsv"
    f.write_bytes(body if isinstance(body, bytes) else body.encode())
    with pytest.raises(DataError, match=where) as e:
        load_query_texts(f)
    assert str(f) in str(e.value)
    with pytest.raises(DataError, match="file not found"):
        load_query_texts(tmp_path / "missing.tsv")


def ranks(run_dir, task="t2i") -> dict[str, int]:
    """query id -> rank of its first relevant item (0: none in the top-k), from the run's per_query.json."""
    got = json.loads((run_dir / "per_query.json").read_text())[task]
    return dict(zip(got["query_ids"], got["rank"]))


@pytest.mark.parametrize("method", [["method=embedding"], ["backbone.input=tokens"]], ids=["embedding", "tokens"])
def test_translated_queries_through_the_pipeline(method, make_cfg, tmp_path):
    """Each query reads its text from the file: the captions of one image, each given the next caption's text,
    rank as that caption did in English (the file ignored, they would rank as before); fp32 on one thread, so that
    a query's vector does not depend on the batch it is embedded in."""
    method = [*method, "precision=fp32", "threads=1"]
    english = Pipeline(make_cfg(*method, run="en"), tmp_path / "en")
    english.run()
    before, ds = ranks(tmp_path / "en"), english.dataset()
    by_image: dict[tuple, list] = {}
    for q in ds.queries("test", "t2i"):
        by_image.setdefault(q.relevant, []).append(q)
    qs = next(qs for qs in by_image.values() if len({before[q.id] for q in qs}) > 1)  # captions that rank apart
    shifted = qs[1:] + qs[:1]
    f = tmp_path / "shifted.tsv"
    f.write_text("".join(f"{q.id}\t{s.text}\n" for q, s in zip(qs, shifted)))
    Pipeline(make_cfg(*method, f"eval.query_texts={f}", run="x"), tmp_path / "x").run()
    assert ranks(tmp_path / "x") == {q.id: before[s.id] for q, s in zip(qs, shifted)}
