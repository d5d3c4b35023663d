"""genretr.report: collecting results.json files and printing markdown tables."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genretr import report
from genretr.evaluation.metrics import metrics_from_ranks
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
    assert header(t) == ["run", "n", "t2i R@1", "t2i R@5", "t2i R@10", "q/s"]
    r = rows(t)
    # backbone.num_layers=2 is shared, so it is left out of every label; rows sorted by label.
    assert list(r) == ["identifier=atomic", "identifier=string", "method=embedding"]
    assert r["identifier=string"] == ["1", "12.0", "30.0", "41.0", "85.3"]
    assert r["method=embedding"] == ["1", "50.0", "80.0", "–", "1000.0"]     # missing R@10
    assert t.splitlines()[1] == "|---|---:|---:|---:|---:|---:|"


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
    assert header(t) == ["run", "n", "t2i R@1", "t2i MRR@10", "i2t R@1", "i2t MRR@10", "t2i q/s", "i2t q/s"]
    assert rows(t)["method=embedding"] == ["1", "25.0", "50.0", "75.0", "–", "3.0", "–"]
    assert header(markdown_table(runs, tasks=["i2t"], metrics=["R@1"])) == ["run", "n", "i2t R@1", "q/s"]


def test_reference_matching_and_paper_only_rows(tmp_path):
    runs = collect([make_multirun(tmp_path / "m")])
    ref = load_reference(REPO / "experiments" / "grace" / "table1_flickr30k.yaml")
    t = markdown_table(runs, reference=ref)
    r = rows(t)
    assert r["identifier=string"] == ["1", "12.0 (30.5)", "30.0 (39.0)", "41.0 (40.4)", "85.3"]
    assert r["identifier=atomic"][:4] == ["1", "70.0 (68.4)", "90.0 (88.9)", "95.0 (93.7)"]
    # The embedding run also has choice identifier=string; its explicit override wins.
    assert r["method=embedding"] == ["1", "50.0 (58.4)", "80.0 (81.5)", "– (88.1)", "1000.0"]
    labels = list(r)
    assert labels[3:] == ["identifier=numeric (paper only)", "identifier=semantic (paper only)",
                          "identifier=structured (paper only)", "identifier=image_tokens (paper only)"]
    assert r["identifier=structured (paper only)"] == ["0", "– (37.4)", "– (59.5)", "– (66.2)", "–"]
    assert "GRACE Table 1, Flickr30K" in t


def test_reference_matches_choices_and_multi_pair_keys(tmp_path):
    make_run(tmp_path / "a", [], {"R@1": 0.1})                                    # choices only
    make_run(tmp_path / "b", ["backbone.num_layers=4"], {"R@1": 0.2}, choices={"identifier": "atomic"})
    ref = {"rows": {"identifier=string": {"t2i": {"R@1": 1.0}},
                    "identifier=atomic": {"t2i": {"R@1": 2.0}},
                    "identifier=atomic, backbone.num_layers=4": {"t2i": {"R@1": 3.0}},
                    "identifier=string, dataset=flickr30k": {"t2i": {"R@1": 0.03}}}}
    r = rows(markdown_table(collect([tmp_path]), reference=ref, metrics=["R@1"]))
    assert r["(default)"] == ["1", "10.0 (1.0)", "–"]
    assert r["backbone.num_layers=4"] == ["1", "20.0 (3.0)", "–"]       # the most specific key wins
    assert r["identifier=atomic (paper only)"] == ["0", "– (2.0)", "–"]
    assert r["identifier=string, dataset=flickr30k (paper only)"] == ["0", "– (0.03)", "–"]


def test_main_prints_and_writes(tmp_path, capsys):
    make_multirun(tmp_path / "m")
    out = tmp_path / "table.md"
    assert main([str(tmp_path), "--metrics", "R@1", "--tasks", "t2i", "--out", str(out),
                 "--reference", str(REPO / "experiments/grace/table1_flickr30k.yaml")]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    assert header(printed) == ["run", "n", "t2i R@1", "q/s"]
    assert "| identifier=string | 1 | 12.0 (30.5) | 85.3 |" in printed


def test_cli_subprocess(tmp_path):
    make_multirun(tmp_path / "m")
    p = subprocess.run([sys.executable, "-m", "genretr.report", str(tmp_path / "m")], cwd=REPO,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    assert "| identifier=atomic | 1 | 70.0 | 90.0 | 95.0 | 50.0 |" in p.stdout


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
    assert r["decoding.rerank=False"][1] == "50.0 (40.0)"


# -- seeds, paired tests over queries, provenance --------------------------------------------------------

def make_ranked_run(d: Path, overrides, seed, ranks, commit="c0ffee0", dirty=False, per_query=True, ids=None):
    """A fake run of seed `seed` whose t2i queries q0, q1, ... have first-hit `ranks` (0 = miss): results.json
    with their metrics and provenance, and (unless per_query=False) per_query.json."""
    ranks = [int(r) for r in ranks]
    ids = ids or [f"q{i}" for i in range(len(ranks))]
    prov = {"git": {"commit": commit, "dirty": dirty}, "seed": seed, "torch_threads": 1, "device": "cpu"}
    make_run(d, [*overrides, f"seed={seed}"], {**metrics_from_ranks(ranks), "queries": len(ranks)}, provenance=prov)
    if per_query:
        (d / "per_query.json").write_text(json.dumps({"t2i": {"query_ids": ids, "rank": ranks}}))
    return d


def hits(n_hit, n=40, extra=()):
    """Ranks of n queries: rank 1 for q0 .. q(n_hit - 1) and the `extra` ones, a miss elsewhere."""
    return [1 if i < n_hit or i in extra else 0 for i in range(n)]


def test_seed_replicates_are_one_row_with_mean_and_std(tmp_path):
    for seed, r1 in enumerate([0.12, 0.15, 0.21]):   # mean 16.0, sample std sqrt(0.0021) = 4.58 points
        make_run(tmp_path / "m" / str(seed), ["identifier=string", f"seed={seed}"],
                 {"R@1": r1, **({"R@10": 0.5} if seed else {}), "q_per_s": 10.0 * (seed + 1), "queries": 100})
    make_run(tmp_path / "m" / "3", ["identifier=atomic", "seed=0"], {"R@1": 0.333, "queries": 100})
    t = markdown_table(collect([tmp_path / "m"]), metrics=["R@1", "R@10", "queries"])
    assert header(t) == ["run", "n", "t2i R@1", "t2i R@10", "t2i queries", "q/s"]
    r = rows(t)
    assert list(r) == ["identifier=atomic", "identifier=string"]     # seed is not part of the label
    assert r["identifier=string"] == ["3", "16.0 ± 4.6", "50.0 ± 0.0 [2]", "100", "20.0 ± 10.0"]
    assert r["identifier=atomic"] == ["1", "33.3", "–", "100", "–"]    # n = 1: the mean alone


def test_seed_from_provenance_override_or_hydra_config(tmp_path):
    make_run(tmp_path / "a", ["seed=3"], provenance={"seed": 7})
    make_run(tmp_path / "b", ["seed=3"])
    make_run(tmp_path / "c", [])
    (tmp_path / "c" / ".hydra" / "config.yaml").write_text("seed: 5\nmethod: {name: generative}\n")
    make_run(tmp_path / "d", [])
    assert [r["seed"] for r in collect([tmp_path])] == [7, 3, 5, None]


def orderings_runs(tmp_path: Path) -> Path:
    """Rows a, b, c (3 seeds, per-query data) and d (no per_query.json); per seed, of 40 queries:
    a hits q0-q29; b q0-q9; c q0-q27 and q30 (so a - c: 2 wins, 1 loss per seed); d q0-q4."""
    ranks = {"a": hits(30), "b": hits(10), "c": hits(28, extra=(30,)), "d": hits(5)}
    for seed in range(3):
        for name, r in ranks.items():
            make_ranked_run(tmp_path / "m" / f"{name}{seed}", [f"identifier={name}"], seed, r, per_query=name != "d")
    ref = tmp_path / "ref.yaml"
    ref.write_text(yaml.safe_dump({"paper": "P", "rows": {
        "identifier=a": {"t2i": {"R@1": 60.0, "R@10": 1.0}}, "identifier=b": {"t2i": {"R@1": 40.0}},
        "identifier=c": {"t2i": {"R@1": 20.0}}, "identifier=d": {"t2i": {"R@1": 20.0, "R@10": 99.0}}}}))
    return ref


def test_orderings_hold_not_separated_reversed(tmp_path, capsys):
    ref = orderings_runs(tmp_path)
    assert main([str(tmp_path / "m"), "--reference", str(ref), "--metrics", "R@1,R@10"]) == 0
    out = capsys.readouterr().out
    assert rows(out)["identifier=a"] == ["3", "75.0 ± 0.0 (60.0)", "75.0 ± 0.0 (1.0)", "–"]
    section = out[out.index("Orderings"):].splitlines()
    assert section[0].startswith("Orderings, t2i R@1 (paired sign-flip permutation test")  # the first metric
    # a - b: 60 wins, no loss (Monte Carlo, p = 1/10001); a - c: 6 wins, 3 losses, exact p = 260/512;
    # b - c: 57 losses.  c and d have equal paper values: no line.
    assert section[1:] == [
        "- paper: identifier=a > identifier=b (60.0 vs 40.0); ours: identifier=a − identifier=b = +50.0 points, "
        "p < 0.001 (adjusted p < 0.001) → holds",
        "- paper: identifier=a > identifier=c (60.0 vs 20.0); ours: identifier=a − identifier=c = +2.5 points, "
        "p = 0.508 (adjusted p = 0.508) → not separated",
        "- paper: identifier=a > identifier=d (60.0 vs 20.0); ours: no per-query data for identifier=d (seed 0)",
        "- paper: identifier=b > identifier=c (40.0 vs 20.0); ours: identifier=b − identifier=c = -47.5 points, "
        "p < 0.001 (adjusted p < 0.001) → reversed",
        "- paper: identifier=b > identifier=d (40.0 vs 20.0); ours: no per-query data for identifier=d (seed 0)",
    ]


def test_compare_pairs_by_query_id_over_common_seeds(tmp_path, capsys):
    # b's queries are listed in reverse order and it lacks seed 0: pairs are (seed, query id), seeds 1 and 2.
    for seed in range(3):
        make_ranked_run(tmp_path / f"a{seed}", ["identifier=atomic"], seed, hits(30))
        if seed:
            make_ranked_run(tmp_path / f"b{seed}", ["identifier=string"], seed, hits(28, extra=(30,))[::-1],
                            ids=[f"q{i}" for i in range(40)][::-1])
    assert main([str(tmp_path), "--metrics", "R@1,MRR@10", "--compare", "atomic", "identifier=string"]) == 0
    out = capsys.readouterr().out
    assert rows(out)["identifier=string"][0] == "2"
    # 2 seeds x (2 wins, 1 loss): 6 non-zero differences, sums >= |2|: 2 * (1 + 6 + 15) of 64 patterns.
    p = 2 * (1 + 6 + 15) / 64
    assert out.splitlines()[-2:] == [
        f"- t2i R@1: identifier=atomic − identifier=string = +2.5 points over 80 query pairs, p = {p:.3f}; "
        "per seed +2.5, +2.5",
        f"- t2i MRR@10: identifier=atomic − identifier=string = +2.5 points over 80 query pairs, p = {p:.3f}; "
        "per seed +2.5, +2.5"]


def test_compare_rows_without_a_common_seed_says_so(tmp_path, capsys):
    make_ranked_run(tmp_path / "a", ["identifier=atomic"], 0, hits(30))
    make_ranked_run(tmp_path / "b", ["identifier=string"], 1, hits(20))
    assert main([str(tmp_path), "--metrics", "R@1", "--compare", "atomic", "string"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "- t2i R@1: no seeds in common"


def test_compare_unknown_or_ambiguous_row(tmp_path, capsys):
    make_ranked_run(tmp_path / "a", ["identifier=atomic"], 0, hits(3))
    make_ranked_run(tmp_path / "b", ["identifier=string"], 0, hits(2))
    assert "'identifier' matches 2 rows" in _error(capsys, [str(tmp_path), "--compare", "identifier", "atomic"])
    assert "'numeric' matches no row" in _error(capsys, [str(tmp_path), "--compare", "numeric", "atomic"])


def test_warns_when_commits_differ_or_unknown_or_dirty(tmp_path, capsys):
    make_ranked_run(tmp_path / "a", ["identifier=atomic"], 0, hits(3), commit="1111111111aaaa")
    make_ranked_run(tmp_path / "b", ["identifier=string"], 0, hits(2), commit="1111111111aaaa")
    assert main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err.lower() and "warning" not in out.lower()     # one clean commit: silent

    make_ranked_run(tmp_path / "c", ["identifier=numeric"], 0, hits(2), commit="2222222222bbbb", dirty=True)
    make_run(tmp_path / "d", ["identifier=semantic"], {"R@1": 0.1})                   # no provenance at all
    assert main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "warning: runs come from 2 git commits: 1111111111 (2 runs), 2222222222 (1 run); "
        "rows may differ by code, not config alone",
        "warning: 1 of 4 runs record no git commit (results.json without provenance.git.commit): "
        "their code is unknown",
        "warning: 1 of 4 runs were made from a dirty work tree: their code is not committed"]
    notes = [line for line in out.splitlines() if line.startswith("Warning: ")]
    assert [n[len("Warning: "):].rstrip(".") for n in notes] == [e[len("warning: "):] for e in err.splitlines()]


def test_bad_per_query_file_is_one_line_error(tmp_path, capsys):
    make_ranked_run(tmp_path / "a", ["identifier=atomic"], 0, hits(3))
    make_ranked_run(tmp_path / "b", ["identifier=string"], 0, hits(2))
    bad = tmp_path / "b" / "per_query.json"
    bad.write_text(json.dumps({"t2i": {"query_ids": ["q0"], "rank": [1, 2]}}))
    assert str(bad) in _error(capsys, [str(tmp_path), "--compare", "atomic", "string"])


def test_real_tiny_runs_write_per_query_ranks_that_give_their_metrics(make_cfg, tmp_path, capsys):
    """Two real runs (the second only re-evaluates, top_k=5): per_query.json's ranks give results.json's
    metrics, and the report's paired difference equals the difference of those metrics."""
    from genretr.run import execute

    execute(make_cfg("method=embedding", "eval.tasks=[t2i,i2t]"), tmp_path / "run")
    execute(make_cfg("method=embedding", "eval.tasks=[t2i,i2t]", "eval.top_k=5", run="top5"), tmp_path / "top5")
    results = {}
    for name in ("run", "top5"):
        res = json.loads((tmp_path / name / "results.json").read_text())["metrics"]
        per_query = json.loads((tmp_path / name / "per_query.json").read_text())
        assert set(per_query) == set(res) == {"t2i", "i2t"}
        for task, m in res.items():
            ranks = per_query[task]["rank"]
            assert len(ranks) == len(set(per_query[task]["query_ids"])) == m["queries"]
            assert max(ranks) <= (5 if name == "top5" else 10)
            assert metrics_from_ranks(ranks) == {k: m[k] for k in ("R@1", "R@5", "R@10", "MRR@10")}
        results[name] = res
    assert main([str(tmp_path / "run"), str(tmp_path / "top5"), "--metrics", "R@10", "--compare", "(default)",
                 "top_k=5"]) == 0
    out = capsys.readouterr().out
    for task, n in (("t2i", 100), ("i2t", 20)):
        diff = 100 * (results["run"][task]["R@10"] - results["top5"][task]["R@10"])
        assert f"- {task} R@10: (default) − eval.top_k=5 = {diff:+.1f} points over {n} query pairs, p" in out


def test_one_lucky_seed_does_not_make_an_ordering_hold(tmp_path, capsys):
    """Seed 0's model of row a is far better, seeds 1 and 2 a little worse: pooled over queries the test
    separates (p < 0.05), but the seeds disagree in sign, so the ordering is not separated."""
    for seed, (a_hits, b_hits) in enumerate([(35, 5), (18, 20), (18, 20)]):
        make_ranked_run(tmp_path / "m" / f"a{seed}", ["identifier=a"], seed, hits(a_hits))
        make_ranked_run(tmp_path / "m" / f"b{seed}", ["identifier=b"], seed, hits(b_hits))
    ref = tmp_path / "ref.yaml"
    ref.write_text(yaml.safe_dump({"rows": {"identifier=a": {"t2i": {"R@1": 60.0}},
                                            "identifier=b": {"t2i": {"R@1": 40.0}}}}))
    assert main([str(tmp_path / "m"), "--reference", str(ref), "--metrics", "R@1"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    # pooled: 30 wins (seed 0), then 2 losses in each other seed: 26 / 120 = +21.7 points, p < 0.001
    assert line.endswith("→ not separated (the seeds disagree in sign)") and "= +21.7 points, p < 0.001" in line


def test_a_verdict_from_one_common_seed_says_so(tmp_path, capsys):
    make_ranked_run(tmp_path / "m" / "a0", ["identifier=a"], 0, hits(30))
    for seed in range(3):
        make_ranked_run(tmp_path / "m" / f"b{seed}", ["identifier=b"], seed, hits(5))
    ref = tmp_path / "ref.yaml"
    ref.write_text(yaml.safe_dump({"rows": {"identifier=a": {"t2i": {"R@1": 60.0}},
                                            "identifier=b": {"t2i": {"R@1": 40.0}}}}))
    assert main([str(tmp_path / "m"), "--reference", str(ref), "--metrics", "R@1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(
        "→ holds (one seed in common: the spread over seeds is untested)")
