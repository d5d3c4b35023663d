"""experiments/ssid/describer_oracle.py: the pair-caption describer gives each caption-less image its pair's caption;
--seeds and --jobs reach every run; the seeds' mean ± std is printed."""
import importlib.util
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


def test_seeds_and_jobs_reach_every_run_and_the_mean_is_printed(oracle, monkeypatch, capsys):
    calls = []

    def evaluate(overrides, is_oracle, seed, jobs=1):
        calls.append((overrides, is_oracle, seed, jobs))
        r1 = 10.0 * (seed + 1)
        return {oracle.ALL: [r1, 50.0, 60.0], oracle.ALL + " n": 5,
                oracle.UNSEEN: [r1 / 2, 40.0, 50.0], oracle.UNSEEN + " n": 4}

    monkeypatch.setattr(oracle, "evaluate", evaluate)
    oracle.main(["--seeds", "0,1,2", "--jobs", "2", "--captioner", "experiment=ssid_table1", "identifier=ssid"])
    assert calls == [(["experiment=ssid_table1", "identifier=ssid"], False, s, 2) for s in (0, 1, 2)]
    out = capsys.readouterr().out
    assert "(captioner describer): all five queries, mean ± std over seeds 0,1,2: R@1 20.0 ± 10.0" in out
    assert "the four non-pair-caption queries, mean ± std over seeds 0,1,2: R@1 10.0 ± 5.0" in out


def test_a_flag_without_its_value_is_one_line(oracle):
    with pytest.raises(SystemExit, match="--jobs needs a value"):
        oracle.main(["experiment=ssid_table1", "--jobs"])


def test_one_seed_and_one_job_by_default(oracle, monkeypatch):
    calls = []
    monkeypatch.setattr(oracle, "evaluate", lambda o, is_oracle, seed, jobs=1: calls.append((is_oracle, seed, jobs))
                        or {k: v for label in (oracle.ALL, oracle.UNSEEN)
                            for k, v in ((label, [1.0, 2.0, 3.0]), (label + " n", 1))})
    oracle.main(["experiment=ssid_table1"])
    assert calls == [(True, 0, 1)]
