"""Queries in another language (SSID Table IV): eval.query_texts."""
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
                                        ("q1\t \n", "line 1"), ("# only a comment\n", "no queries")])
def test_bad_files_name_the_file_and_line(tmp_path, body, where):
    f = tmp_path / "bad.tsv"
    f.write_text(body)
    with pytest.raises(DataError, match=where) as e:
        load_query_texts(f)
    assert str(f) in str(e.value)
    with pytest.raises(DataError, match="file not found"):
        load_query_texts(tmp_path / "missing.tsv")


def test_translated_queries_through_the_pipeline(make_cfg, tmp_path):
    base = Pipeline(make_cfg("method=embedding"), tmp_path / "en")
    ds = base.dataset()
    qs = ds.queries("test", "t2i")[:6]
    f = tmp_path / "shouted.tsv"
    # a "language" the encoder never saw in training: the captions upper-cased and reversed word order
    f.write_text("".join(f"{q.id}\t{' '.join(reversed(q.text.upper().split()))}\n" for q in qs))
    for extra in ([], ["backbone.input=tokens"]):
        method = ["method=embedding"] if not extra else []
        m = Pipeline(make_cfg(*method, *extra, f"eval.query_texts={f}", run="x" + str(len(extra))),
                     tmp_path / ("x" + str(len(extra)))).run()
        assert m["t2i"]["queries"] == 6 and 0.0 <= m["t2i"]["R@10"] <= 1.0
