"""experiments/ssid/describer_oracle.py: the pair-caption describer gives each caption-less image its pair's caption;
--seeds, --jobs and --out reach every run; recall on all five queries, on the four, and with and without identifier
words of the target's own; --compare's paired test."""
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from genretr.data.schema import Item, Query, RetrievalDataset, Split
from genretr.pipeline import Pipeline

SCRIPT = Path(__file__).resolve().parents[1] / "experiments/ssid/describer_oracle.py"


@pytest.fixture(scope="module")
def oracle():
    spec = importlib.util.spec_from_file_location("describer_oracle", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_caption_less_images_read_their_pair_caption(oracle, make_cfg, tmp_path, monkeypatch):
    """The pair-caption describer: an image without a caption of its own reads its image-text pair's."""
    items = {"i0": Item("i0", "image", image=0), "i1": Item("i1", "image", image=1),
             "i2": Item("i2", "image", image=2), "p1": Item("p1", "image,text", image=1, text="a red square"),
             "p2": Item("p2", "image,text", image=2, text="a blue circle")}
    ds = RetrievalDataset("toy", np.zeros((3, 4, 4, 3), np.uint8), items, {"train": Split(), "test": Split()})
    # the scheme's own context: i2 is a train image with its own caption, i0 and i1 have none
    monkeypatch.setattr(Pipeline, "scheme_context",
                        lambda self, *a: SimpleNamespace(item_captions={"i2": ["its own caption"]}))
    ctx = oracle.PairCaptionPipeline(make_cfg(), tmp_path / "run").scheme_context(
        ds, None, ["i0", "i1", "i2"], tmp_path / "work")
    # i1 reads its image's pair caption, i2 keeps its own, i0 has no pair and stays caption-less
    assert ctx.item_captions == {"i1": ["a red square"], "i2": ["its own caption"]}


def record(seed: int, ranks: list[int]) -> dict:
    """Five queries of one image: the first is its pair caption."""
    return {"seed": seed, "query_ids": [f"q{i}" for i in range(len(ranks))], "rank": ranks,
            "pair_caption": [i % 5 == 0 for i in range(len(ranks))], "shared": [1] * len(ranks),
            "wording": {"mentions": 10, "most_used": 0.5 + 0.1 * seed}}


def test_recall_on_all_five_and_on_the_four(oracle):
    """R@K and MRR@10 from first-hit ranks (0: not found), on all five queries and on the four that are not
    the image's pair caption."""
    found = oracle.scores(record(0, [1, 2, 0, 11, 1]))  # the pair caption (rank 1) counts in "all" only
    assert found[oracle.ALL] == pytest.approx([40.0, 60.0, 60.0, 50.0]) and found[oracle.ALL + " n"] == 5
    assert found[oracle.UNSEEN] == pytest.approx([25.0, 50.0, 50.0, 37.5]) and found[oracle.UNSEEN + " n"] == 4


def test_seeds_jobs_and_out_reach_every_run_and_the_mean_is_printed(oracle, monkeypatch, capsys, tmp_path):
    """Each seed's run gets the overrides and --jobs; --out holds a record per seed; mean ± std over seeds."""
    calls = []

    def evaluate(overrides, is_oracle, seed, jobs=1):
        calls.append((overrides, is_oracle, seed, jobs))
        return record(seed, [1] * (seed + 1) + [0] * (4 - seed))  # R@1 on all five: 20, 40, 60

    monkeypatch.setattr(oracle, "evaluate", evaluate)
    out = tmp_path / "captioner-ssid"
    oracle.main(["--seeds", "0,1,2", "--jobs", "2", "--captioner", "experiment=ssid_table1", "--out", str(out),
                 "identifier=ssid"])
    assert calls == [(["experiment=ssid_table1", "identifier=ssid"], False, s, 2) for s in (0, 1, 2)]
    printed = capsys.readouterr().out
    assert "(captioner describer): all five queries, mean ± std over seeds 0,1,2: R@1 40.0 ± 20.0" in printed
    assert "the four non-pair-caption queries, mean ± std over seeds 0,1,2: R@1 25.0 ± 25.0" in printed
    assert "seed 2: the target images' identifiers: 0.70 of their 10 shape, colour, size and background" in printed
    assert "identifiers, mean ± std over seeds: 0.60 ± 0.10 of their concept words" in printed
    assert sorted(p.name for p in out.iterdir()) == ["seed0.json", "seed1.json", "seed2.json"]
    assert json.loads((out / "seed2.json").read_text())["rank"] == [1, 1, 1, 0, 0]


def test_compare_pairs_queries_by_seed_and_id(oracle, tmp_path, capsys):
    """A - B pairs each query of A with B's of the same seed and id (B lists its queries in another order; a seed
    only A has is left out), on A's subsets (all five, the four) and on the queries whose target has words of its
    own in both; a run against itself is not separated."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
    rng = np.random.default_rng(0)
    by_id = {}
    for seed in (0, 1, 2):
        rb = record(seed, rng.integers(1, 4, 200).tolist())
        rb["shared"] = rng.integers(1, 3, 200).tolist()
        ra = {**rb, "rank": [max(1, r - 1) for r in rb["rank"]],  # A ranks each query's image one place higher
              "shared": rng.integers(1, 3, 200).tolist()}
        (a / f"seed{seed}.json").write_text(json.dumps(ra))
        if seed == 2:
            continue  # only A has seed 2
        by_id[seed] = (np.asarray(ra["rank"]), np.asarray(rb["rank"]), ~np.asarray(rb["pair_caption"]),
                       (np.asarray(ra["shared"]) == 1) & (np.asarray(rb["shared"]) == 1))  # OWN: own words in both
        order = rng.permutation(200)
        (b / f"seed{seed}.json").write_text(json.dumps({k: [v[i] for i in order] if isinstance(v, list) else v
                                                        for k, v in rb.items()}))
    oracle.main(["--compare", str(a), str(b), "--compare", str(b), str(b)])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * 3 * 4  # two comparisons x three subsets x four metrics
    for label in (oracle.ALL, oracle.UNSEEN, oracle.OWN):
        sels = [{oracle.ALL: np.ones(200, bool), oracle.UNSEEN: unseen, oracle.OWN: own}[label]
                for _, _, unseen, own in by_id.values()]
        diffs = [100 * ((ra[sel] == 1).mean() - (rb[sel] == 1).mean())
                 for (ra, rb, _, _), sel in zip(by_id.values(), sels)]
        line = next(ln for ln in lines if ln.startswith(f"{a} - {b}, {label}, R@1:"))
        assert f"(seeds {diffs[0]:+.1f} / {diffs[1]:+.1f}; {sum(int(sel.sum()) for sel in sels)} pairs)" in line, line
        assert "Holm over 24" in line and line.endswith("A > B holds")
    assert all(ln.endswith("A > B not separated") for ln in lines if ln.startswith(f"{b} - {b}"))


def test_compare_refuses_records_of_two_datasets(oracle, tmp_path):
    """B's records must mark the same queries as pair captions as A's (the subsets are A's)."""
    for name, flags in (("a", [True, False]), ("b", [False, True])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "seed0.json").write_text(json.dumps({"seed": 0, "query_ids": ["q0", "q1"],
                                                                 "rank": [1, 2], "pair_caption": flags}))
    with pytest.raises(SystemExit, match="disagree on which queries are pair captions"):
        oracle.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b")])


def test_bad_arguments_are_one_line(oracle, tmp_path):
    """A flag without its value, a flag twice, --compare with other arguments, a directory without records."""
    for args, message in ((["experiment=ssid_table1", "--jobs"], "--jobs needs a value"),
                          (["--out", "--captioner", "experiment=ssid_table1"], "--out needs a value"),
                          (["--seeds", "0", "--seeds", "1"], "--seeds is given twice"),
                          (["--compare", str(tmp_path)], "--compare takes two"),
                          (["--compare", "a", "b", "--seeds", "0,1"], "--compare takes two"),
                          (["--compare", "a", "--compare", "b", "c"], "--compare takes two"),
                          (["--compare", str(tmp_path), str(tmp_path)], f"{tmp_path}: no seed")):
        with pytest.raises(SystemExit, match=message):
            oracle.main(args)


def test_one_seed_and_one_job_by_default(oracle, monkeypatch):
    """Without flags: seed 0, one job, the pair-caption describer."""
    calls = []
    monkeypatch.setattr(oracle, "evaluate", lambda o, is_oracle, seed, jobs=1:
                        calls.append((is_oracle, seed, jobs)) or record(seed, [1, 0, 0, 0, 0]))
    oracle.main(["experiment=ssid_table1"])
    assert calls == [(True, 0, 1)]


def test_a_run_records_its_first_hit_ranks_and_pair_captions(oracle, monkeypatch, tmp_path):
    """evaluate(): each t2i query's id, the 1-based rank of its image in the search's ranking (0: not in it),
    whether the query is its image's pair caption and how many target images have its target's identifier words;
    the run composes the given overrides and seed."""
    items = {"i0": Item("i0", "image", image=0), "i1": Item("i1", "image", image=1),
             "i2": Item("i2", "image", image=2), "p0": Item("p0", "image,text", image=0, text="a red square")}
    queries = [Query("q0", "t2i", ("i0",), text="a red square"), Query("q1", "t2i", ("i0",), text="red block"),
               Query("q2", "t2i", ("i1",), text="a circle"), Query("q3", "t2i", ("i2",), text="a blue disc")]
    ds = RetrievalDataset("toy", np.zeros((3, 4, 4, 3), np.uint8), items, {"train": Split(), "test": Split()})
    seen = {}

    def task_rankings(self, task):
        seen.update(task=task, seed=self.cfg.seed, collisions=self.cfg.identifier.collisions,
                    pipeline=type(self).__name__, cache=self.cfg.paths.cache_dir)
        return ds, queries, [["i1", "i0"], ["i0", "i1"], ["i0"], ["i2"]]

    monkeypatch.setattr(Pipeline, "task_rankings", task_rankings)
    monkeypatch.setattr(Pipeline, "encode", lambda self, ds_: "embeddings")
    monkeypatch.setattr(Pipeline, "identify", lambda self, ds_, emb: SimpleNamespace(
        text={"i0": "a crimson square on a dark background #0", "i1": "a crimson square on a dark background #1",
              "i2": "a blue disc"}.get))
    monkeypatch.setattr(oracle, "CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    rec = oracle.evaluate(["experiment=ssid_table1", "identifier=semantic", "identifier.collisions=disambiguate",
                           "threads=1"], True, 3)
    assert rec == {"seed": 3, "query_ids": ["q0", "q1", "q2", "q3"], "rank": [2, 1, 0, 1],
                   "pair_caption": [True, False, False, False],
                   "shared": [2, 2, 2, 1],  # i0 and i1: the same words, told apart by their counters
                   "wording": {"mentions": 8, "most_used": 1.0}}
    assert seen == {"task": "t2i", "seed": 3, "collisions": "disambiguate", "pipeline": "PairCaptionPipeline",
                    "cache": str(tmp_path / "cache")}


def test_wording_counts_each_concepts_most_used_wording(oracle):
    """The share of concept words in their concept's most used wording: longer wordings first ("plus sign" is
    no "plus"; "deep blue" is the navy background, not the colour), a hyphenated word is one ("snow-white")."""
    ids = ["a red plus sign on a deep blue background", "a crimson plus on a navy background",
           "a red circle #2", "a snow-white disc on a dark background"]
    # red 2 of 3 (crimson); cross: "plus sign" 1, "plus" 1; navy: "deep blue" 1, "navy" 1; circle 1, disc 1;
    # white: "snow-white" 1; black: "dark" 1 -> most used 2 + 1 + 1 + 1 + 1 + 1 of 11 mentions
    assert oracle.wording(ids) == {"mentions": 11, "most_used": pytest.approx(7 / 11)}
    assert oracle.wording(["a red circle", "a red circle"]) == {"mentions": 4, "most_used": 1.0}
    # the captions' conjunction ", plus a ..." is no cross; SSID's identifier words split "snow-white" and
    # the keywords generator drops its hyphen: both are still the one wording "snow-white"
    assert oracle.wording(["a red circle , plus a blue square"]) == {"mentions": 4, "most_used": 1.0}
    assert oracle.wording(["a snow - white three - sided shape", "a snow white wedge plus",
                           "a plus sign, plus the red plus"]) == {"mentions": 8, "most_used": 0.75}


def test_shared_words_leave_out_the_final_counter(oracle):
    """How many items have an item's identifier words: a final "#j" counter is left out, a "#" word elsewhere
    is a word."""
    ids = {"a": "red square #0", "b": "red square #1", "c": "red square", "d": "# red square", "e": "blue disc"}
    assert oracle.shared_words(ids) == {"a": 3, "b": 3, "c": 3, "d": 1, "e": 1}


def test_a_run_prints_recall_with_and_without_words_of_its_own(oracle, monkeypatch, capsys):
    """Each seed: the share of queries whose target has identifier words of its own, R@1 on them and on the
    others."""
    monkeypatch.setattr(oracle, "evaluate", lambda o, is_oracle, seed, jobs=1:
                        {**record(seed, [1, 1, 0, 1, 2, 1]), "shared": [1, 1, 2, 1, 3, 3]})
    oracle.main(["experiment=ssid_table1"])
    assert ("seed 0: 0.500 of the queries' targets have identifier words of their own: R@1 100.0 on those, "
            "33.3 on the others") in capsys.readouterr().out


def test_compare_refuses_records_without_shared(oracle, tmp_path):
    """Records written before `shared` was recorded name the seeds to run again (those both runs have)."""
    rec = {"query_ids": ["q0", "q1"], "rank": [1, 2], "pair_caption": [True, False]}
    for name, seeds_without in (("a", ()), ("b", (0, 2, 3))):  # seed 3: only B has it, never compared
        (tmp_path / name).mkdir()
        for seed in (0, 1, 2) + ((3,) if name == "b" else ()):
            shared = {} if seed in seeds_without else {"shared": [1, 1]}
            (tmp_path / name / f"seed{seed}.json").write_text(json.dumps({"seed": seed, **rec, **shared}))
    with pytest.raises(SystemExit, match=r"b: seed0.json, seed2.json have no \"shared\""):
        oracle.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b")])
