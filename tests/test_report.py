"""genretr.report: collecting results.json files and printing markdown tables."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genretr import report
from genretr.report import collect, load_reference, main, markdown_table

REPO = Path(__file__).resolve().parents[1]
CHOICES = {"dataset": "shapes", "encoder": "minilm_cnn", "identifier": "string", "backbone": "t5",
           "method": "generative", "trainer": "cpu", "logger": "csv"}


def make_run(d: Path, overrides, t2i=None, choices=None, write_overrides_in_json=True, **extra):
    """A fake Hydra job dir: results.json + .hydra/overrides.yaml."""
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    res = {"method": "generative", "choices": {**CHOICES, **(choices or {})},
           "metrics": {"t2i": t2i or {}}, "elapsed_s": 1.0, **extra}
    if write_overrides_in_json:
        res["overrides"] = list(overrides)
    (d / "results.json").write_text(json.dumps(res))
    return d


def make_multirun(d: Path):
    """0: string (default), 1: embedding, 2: atomic -- all with backbone.num_layers=2."""
    d.mkdir(parents=True)
    (d / "multirun.yaml").write_text("hydra: {}\n")
    make_run(d / "0", ["identifier=string", "backbone.num_layers=2"],
             {"R@1": 0.12, "R@5": 0.30, "R@10": 0.41, "MRR@10": 0.2, "queries": 2500, "q_per_s": 85.3})
    make_run(d / "1", ["method=embedding", "backbone.num_layers=2"],
             {"R@1": 0.5, "R@5": 0.8, "q_per_s": 1000}, choices={"method": "embedding"})
    make_run(d / "2", ["identifier=atomic", "backbone.num_layers=2"],
             {"R@1": 0.7, "R@5": 0.9, "R@10": 0.95, "q_per_s": 50.0}, choices={"identifier": "atomic"})
    return d


def rows(table: str) -> dict[str, list[str]]:
    """label -> cells of the markdown table body."""
    lines = [l for l in table.splitlines() if l.startswith("| ")][1:]
    return {c[0]: c[1:] for c in ([x.strip() for x in l.strip("|").split(" | ")] for l in lines)}


def header(table: str) -> list[str]:
    return [x.strip() for x in table.splitlines()[0].strip("|").split("|")]


def test_collect_recurses_and_dedups(tmp_path):
    make_multirun(tmp_path / "multirun" / "2025-01-01" / "12-00-00")
    make_run(tmp_path / "outputs" / "single", [], {"R@1": 0.1})
    runs = collect([tmp_path, tmp_path / "outputs" / "single"])
    assert len(runs) == 4 and all(Path(r["path"]).name == "results.json" for r in runs)
    assert collect([tmp_path / "outputs" / "single" / "results.json"])[0]["overrides"] == []


def test_collect_natural_order_of_job_dirs(tmp_path):
    for i in (10, 2, 1):
        make_run(tmp_path / str(i), [f"seed={i}"])
    assert [Path(r["path"]).parent.name for r in collect([tmp_path])] == ["1", "2", "10"]


def test_overrides_fall_back_to_hydra_record(tmp_path):
    make_run(tmp_path / "r", ["method=embedding"], write_overrides_in_json=False)
    assert collect([tmp_path])[0]["overrides"] == ["method=embedding"]


def test_table_rows_columns_and_labels(tmp_path):
    t = markdown_table(collect([make_multirun(tmp_path / "m")]))
    assert header(t) == ["run", "t2i R@1", "t2i R@5", "t2i R@10", "q/s"]
    r = rows(t)
    # backbone.num_layers=2 is shared, so it is left out of every label; rows sorted by label.
    assert list(r) == ["identifier=atomic", "identifier=string", "method=embedding"]
    assert r["identifier=string"] == ["12.0", "30.0", "41.0", "85.3"]
    assert r["method=embedding"] == ["50.0", "80.0", "–", "1000.0"]     # missing R@10
    assert t.splitlines()[1] == "|---|---:|---:|---:|---:|"


def test_labels_default_and_identical_overrides(tmp_path):
    make_run(tmp_path / "a", [])
    make_run(tmp_path / "b", ["method=embedding", "trainer=cpu"])
    make_run(tmp_path / "c", ["trainer=cpu"])
    assert report.labels(collect([tmp_path])) == ["(default)", "method=embedding, trainer=cpu", "trainer=cpu"]
    runs = [{"overrides": ["x=1", "y=2"]}, {"overrides": ["x=1", "y=2"]}]
    assert report.labels(runs) == ["x=1, y=2", "x=1, y=2"]          # nothing differs: full list
    assert report.labels([{"overrides": []}]) == ["(default)"]


def test_selected_metrics_and_tasks(tmp_path):
    make_run(tmp_path / "a", ["method=embedding"], {"R@1": 0.25, "MRR@10": 0.5, "queries": 10, "q_per_s": 3})
    (tmp_path / "a" / "results.json").write_text(json.dumps(
        {**json.loads((tmp_path / "a" / "results.json").read_text()),
         "metrics": {"t2i": {"R@1": 0.25, "MRR@10": 0.5, "q_per_s": 3}, "i2t": {"R@1": 0.75}}}))
    runs = collect([tmp_path])
    t = markdown_table(runs, metrics=["R@1", "MRR@10"])
    assert header(t) == ["run", "t2i R@1", "t2i MRR@10", "i2t R@1", "i2t MRR@10", "t2i q/s", "i2t q/s"]
    assert rows(t)["method=embedding"] == ["25.0", "50.0", "75.0", "–", "3.0", "–"]
    assert header(markdown_table(runs, tasks=["i2t"], metrics=["R@1"])) == ["run", "i2t R@1", "q/s"]


def test_reference_matching_and_paper_only_rows(tmp_path):
    runs = collect([make_multirun(tmp_path / "m")])
    ref = load_reference(REPO / "experiments" / "grace" / "table1_flickr30k.yaml")
    t = markdown_table(runs, reference=ref)
    r = rows(t)
    assert r["identifier=string"] == ["12.0 (30.5)", "30.0 (39.0)", "41.0 (40.4)", "85.3"]
    assert r["identifier=atomic"][:3] == ["70.0 (68.4)", "90.0 (88.9)", "95.0 (93.7)"]
    # The embedding run also has choice identifier=string; its explicit override wins.
    assert r["method=embedding"] == ["50.0 (58.4)", "80.0 (81.5)", "– (88.1)", "1000.0"]
    labels = list(r)
    assert labels[3:] == ["identifier=numeric (paper only)", "identifier=semantic (paper only)",
                          "identifier=structured (paper only)", "identifier=image_tokens (paper only)"]
    assert r["identifier=structured (paper only)"] == ["– (37.4)", "– (59.5)", "– (66.2)", "–"]
    assert "GRACE Table 1, Flickr30K" in t


def test_reference_matches_choices_and_multi_pair_keys(tmp_path):
    make_run(tmp_path / "a", [], {"R@1": 0.1})                                    # choices only
    make_run(tmp_path / "b", ["backbone.num_layers=4"], {"R@1": 0.2}, choices={"identifier": "atomic"})
    ref = {"rows": {"identifier=string": {"t2i": {"R@1": 1.0}},
                    "identifier=atomic": {"t2i": {"R@1": 2.0}},
                    "identifier=atomic, backbone.num_layers=4": {"t2i": {"R@1": 3.0}},
                    "identifier=string, dataset=flickr30k": {"t2i": {"R@1": 0.03}}}}
    r = rows(markdown_table(collect([tmp_path]), reference=ref, metrics=["R@1"]))
    assert r["(default)"] == ["10.0 (1.0)", "–"]
    assert r["backbone.num_layers=4"] == ["20.0 (3.0)", "–"]       # the most specific key wins
    assert r["identifier=atomic (paper only)"] == ["– (2.0)", "–"]
    assert r["identifier=string, dataset=flickr30k (paper only)"] == ["– (0.03)", "–"]


def test_main_prints_and_writes(tmp_path, capsys):
    make_multirun(tmp_path / "m")
    out = tmp_path / "table.md"
    assert main([str(tmp_path), "--metrics", "R@1", "--tasks", "t2i", "--out", str(out),
                 "--reference", str(REPO / "experiments/grace/table1_flickr30k.yaml")]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    assert header(printed) == ["run", "t2i R@1", "q/s"] and "| identifier=string | 12.0 (30.5) | 85.3 |" in printed


def test_cli_subprocess(tmp_path):
    make_multirun(tmp_path / "m")
    p = subprocess.run([sys.executable, "-m", "genretr.report", str(tmp_path / "m")], cwd=REPO,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    assert "| identifier=atomic | 70.0 | 90.0 | 95.0 | 50.0 |" in p.stdout


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_error_no_results(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert str(tmp_path / "empty") in _error(capsys, [str(tmp_path / "empty")])
    assert "missing" in _error(capsys, [str(tmp_path / "missing")])


def test_error_bad_json(tmp_path, capsys):
    make_multirun(tmp_path / "m")
    bad = tmp_path / "m" / "1" / "results.json"
    bad.write_text("{ not json")
    assert str(bad) in _error(capsys, [str(tmp_path)])
    bad.write_text("[1, 2]")
    assert str(bad) in _error(capsys, [str(tmp_path)])


@pytest.mark.parametrize("text", ["rows: [1, 2]\n", "rows:\n  nokey: {t2i: {R@1: 1}}\n",
                                  "rows:\n  a=b: {t2i: {R@1: high}}\n", "rows: {a=b: [\n", "- 1\n"])
def test_error_bad_reference(tmp_path, capsys, text):
    make_multirun(tmp_path / "m")
    ref = tmp_path / "ref.yaml"
    ref.write_text(text)
    assert str(ref) in _error(capsys, [str(tmp_path), "--reference", str(ref)])


def test_example_reference_is_grace_table1():
    ref = load_reference(REPO / "experiments" / "grace" / "table1_flickr30k.yaml")
    assert ref["dataset"] == "Flickr30K"
    assert ref["rows"]["identifier=structured"]["t2i"] == {"R@1": 37.4, "R@5": 59.5, "R@10": 66.2}
    assert ref["rows"]["method=embedding"]["t2i"] == {"R@1": 58.4, "R@5": 81.5, "R@10": 88.1}
    assert len(ref["rows"]) == 7  # the five identifiers, image tokenization (Table 3) and CLIP


def test_plot_sweep_writes_a_png(tmp_path):
    for k, (ident, beams) in enumerate([("string", 1), ("string", 10), ("numeric", 1), ("numeric", 10)]):
        make_run(tmp_path / "sweep" / str(k), [f"identifier={ident}", f"decoding.num_beams={beams}"],
                 t2i={"R@1": 0.1 * k, "R@10": 0.2 + 0.1 * k})
    png = tmp_path / "beam.png"
    assert main([str(tmp_path / "sweep"), "--plot", "decoding.num_beams", "--series", "identifier",
                 "--metrics", "R@1,R@10", "--png", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main([str(tmp_path / "sweep"), "--plot", "decoding.length_penalty", "--png", str(png)]) == 2


def test_boolean_overrides_match_either_spelling(tmp_path):
    make_run(tmp_path / "m" / "0", ["decoding.rerank=False"], {"R@1": 0.5})
    ref = tmp_path / "ref.yaml"
    ref.write_text(yaml.safe_dump({"rows": {"decoding.rerank=false": {"t2i": {"R@1": 40.0}}}}))
    r = rows(markdown_table(collect([tmp_path / "m"]), load_reference(ref)))
    assert r["decoding.rerank=False"][0] == "50.0 (40.0)"
