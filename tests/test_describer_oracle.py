"""experiments/ssid/describer_oracle.py: the pair-caption describer gives each caption-less image its pair's caption;
--seeds, --jobs and --out reach every run; recall on all five queries and on the four; --compare's paired test."""
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from genretr.data.schema import Item, RetrievalDataset, Split
from genretr.pipeline import Pipeline

SCRIPT = Path(__file__).resolve().parents[1] / "experiments/ssid/describer_oracle.py"


@pytest.fixture(scope="module")
def oracle():
    spec = importlib.util.spec_from_file_location("describer_oracle", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_caption_less_images_read_their_pair_caption(oracle, make_cfg, tmp_path, monkeypatch):
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
            "pair_caption": [i % 5 == 0 for i in range(len(ranks))]}


def test_recall_on_all_five_and_on_the_four(oracle):
    found = oracle.scores(record(0, [1, 2, 0, 11, 1]))  # the pair caption (rank 1) counts in "all" only
    assert found[oracle.ALL] == pytest.approx([40.0, 60.0, 60.0, 50.0]) and found[oracle.ALL + " n"] == 5
    assert found[oracle.UNSEEN] == pytest.approx([25.0, 50.0, 50.0, 37.5]) and found[oracle.UNSEEN + " n"] == 4


def test_seeds_jobs_and_out_reach_every_run_and_the_mean_is_printed(oracle, monkeypatch, capsys, tmp_path):
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
    assert sorted(p.name for p in out.iterdir()) == ["seed0.json", "seed1.json", "seed2.json"]
    assert json.loads((out / "seed2.json").read_text())["rank"] == [1, 1, 1, 0, 0]


def test_compare_pairs_queries_by_seed_and_id(oracle, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        ranks = rng.integers(1, 20, 200).tolist()
        (a / f"seed{seed}.json").write_text(json.dumps(record(seed, [1] * 200)))  # A finds every image first
        rb = record(seed, ranks)
        order = rng.permutation(200)  # B's queries in another order: paired by id, not position
        rb = {**rb, "query_ids": [rb["query_ids"][i] for i in order], "rank": [rb["rank"][i] for i in order]}
        (b / f"seed{seed}.json").write_text(json.dumps(rb))
    oracle.main(["--compare", str(a), str(b), "--compare", str(b), str(b)])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * 2 * 4  # two comparisons x two subsets x four metrics
    first = next(ln for ln in lines if ln.startswith(f"{a} - {b}, all five queries, R@1:"))
    expected = 100 * (1 - np.mean([r == 1 for r in json.loads((b / "seed0.json").read_text())["rank"]
                                   + json.loads((b / "seed1.json").read_text())["rank"]]))
    assert f"{expected:+.1f} (seeds" in first and "400 pairs" in first and first.endswith("A > B holds")
    assert all(ln.endswith("A > B not separated") for ln in lines if ln.startswith(f"{b} - {b}"))


def test_bad_arguments_are_one_line(oracle, tmp_path):
    with pytest.raises(SystemExit, match="--jobs needs a value"):
        oracle.main(["experiment=ssid_table1", "--jobs"])
    with pytest.raises(SystemExit, match="--compare needs two"):
        oracle.main(["--compare", str(tmp_path)])
    with pytest.raises(SystemExit, match=f"{tmp_path}: no seed"):
        oracle.main(["--compare", str(tmp_path), str(tmp_path)])


def test_one_seed_and_one_job_by_default(oracle, monkeypatch):
    calls = []
    monkeypatch.setattr(oracle, "evaluate", lambda o, is_oracle, seed, jobs=1:
                        calls.append((is_oracle, seed, jobs)) or record(seed, [1, 0, 0, 0, 0]))
    oracle.main(["experiment=ssid_table1"])
    assert calls == [(True, 0, 1)]
