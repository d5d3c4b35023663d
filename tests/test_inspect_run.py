"""A finished run looked at, asked and added to (issue 19): results.html against the run's own artifacts,
`python -m genretr.search` ranking as the evaluate stage ranked, with one-line errors for runs it cannot read."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genretr.identifiers.base import IdTable

ROOT = Path(__file__).resolve().parents[1]
RUNS = {  # name -> overrides of a tiny run (one thread, its own cache)
    # 10 beams: every query's ranking holds 10 items whatever the collisions (tiny's 4 beams may cover fewer)
    "genius": ["method=generative", "identifier=genius", "decoding.num_beams=10"],
    "embedding": ["method=embedding", "dataset.tasks=[t2i,i2t]", "eval.tasks=[t2i,i2t]"],
}
# SSID's keywords generator reads the test images' captions from a captioner trained long enough to write some
SSID_RUN = ["method=generative", "identifier=ssid", "identifier.collisions=share", "captioner.fit.max_epochs=20"]


def genretr(module: str, *args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def tiny_run(base: Path, name: str, overrides: list[str]) -> Path:
    out = genretr("genretr.run", "debug=tiny", "logger=none", "threads=1", "precision=fp32", "eval.page_queries=4",
                  *overrides, f"paths.cache_dir={base}/cache", f"hydra.run.dir={base}/{name}")
    assert out.returncode == 0, out.stderr[-3000:]
    return base / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    for name, overrides in RUNS.items():
        tiny_run(base, name, overrides)
    return base


@pytest.fixture(scope="module")
def ssid_run(runs):
    return tiny_run(runs, "ssid", SSID_RUN)  # beside the others: their dataset and encoder come from the cache


class Page(HTMLParser):
    """The page's query blocks: query id -> [(item id, relevant, identifier, score)], its sections and images."""

    def __init__(self, text: str):
        super().__init__()
        self.sections, self.images, self.queries, self.hit, self.code = [], [], {}, None, False
        self.query = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
            self.query = self.hit = None
        elif tag == "img":
            self.images.append(a["src"])
        elif "data-query" in a:
            self.query = self.queries.setdefault(a["data-query"], [])
        elif "data-item" in a:
            self.hit = {"item": a["data-item"], "relevant": "relevant" in a["class"].split(), "text": ""}
            self.query.append(self.hit)
        elif tag == "code" and self.hit is not None:
            self.code = True

    def handle_endtag(self, tag):
        if tag == "code":
            self.code = False

    def handle_data(self, data):
        if self.hit is not None:
            self.hit["text"] += data
            if self.code:
                self.hit["identifier"] = data


def search(capsys, *args):
    """`genretr.search.main(args)` in this process: (exit code, stdout, stderr)."""
    from genretr.search import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def artifact(run: Path, stage: str) -> Path:
    return Path(json.loads((run / "artifacts.json").read_text())[stage])


def test_the_page_shows_relevance_identifiers_and_images_as_the_run_has_them(runs):
    run = runs / "genius"
    page = Page((run / "results.html").read_text())
    assert {"metrics", "task-t2i", "code-tree"} <= set(page.sections)
    table = IdTable.load(artifact(run, "identify"))
    per_query = json.loads((run / "per_query.json").read_text())["t2i"]
    ranks = dict(zip(per_query["query_ids"], per_query["rank"]))
    assert len(page.queries) == 4
    for qid, hits in page.queries.items():
        assert len(hits) == 10
        first = next((i + 1 for i, h in enumerate(hits) if h["relevant"]), 0)
        assert first == ranks[qid]  # the marked item is where per_query.json says the first relevant one is
        for h in hits:
            assert h["identifier"] == table.text(h["item"])
            assert ("✓" in h["text"]) == h["relevant"]
    assert page.images
    size = int(np.load(artifact(run, "dataset") / "images.npy", mmap_mode="r").shape[1])
    for src in set(page.images):  # every image embedded and decodable: the page opens offline
        assert src.startswith("data:image/png;base64,")
        assert Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size == (size, size)


def test_a_free_generation_page_shows_its_misses_at_their_ranks(runs, capsys):
    """decoding.constrained=false: a beam that is no pool identifier is a miss at its rank (GRACE Sec. 4.3), on the
    page as in per_query.json, and `genretr.search` prints it there too."""
    # string IDs: one number token and EOS, so free beams are pool IDs, train images' IDs or no ID
    run = tiny_run(runs, "free", ["method=generative", "identifier=string", "decoding.num_beams=10",
                                  "decoding.constrained=false"])
    page = Page((run / "results.html").read_text())
    per_query = json.loads((run / "per_query.json").read_text())["t2i"]
    ranks = dict(zip(per_query["query_ids"], per_query["rank"]))
    hits = [h for q in page.queries.values() for h in q]
    assert any(h["item"] == "" for h in hits) and any(h["item"] for h in hits)  # misses beside pool items
    for qid, q in page.queries.items():
        assert next((i + 1 for i, h in enumerate(q) if h["relevant"]), 0) == ranks[qid]
        assert all("miss" in h["text"] for h in q if h["item"] == "")
    from genretr.search import LoadedRun

    loaded = LoadedRun(run)
    queries = [q for q in loaded.ds.queries("test", "t2i") if q.id in page.queries]
    for q, found in zip(queries, loaded.search(queries, 10)):
        assert [h.item_id or "" for h in found] == [h["item"] for h in page.queries[q.id]]
    code, out, _ = search(capsys, run, "a shape", "--k", 10)
    code_json, out_json, _ = search(capsys, run, "a shape", "--k", 10, "--json")
    hits = json.loads(out_json)["hits"]
    assert code == code_json == 0 and len(hits) == 10 and out.count("\n") == 11  # the query line and 10 ranks
    misses = [h["rank"] for h in hits if h["item_id"] is None]
    assert misses and all(h["score"] is None for h in hits if h["item_id"] is None)  # JSON null, not NaN
    assert [int(line.split(".")[0]) for line in out.splitlines()[1:] if "(miss" in line] == misses


def test_the_embedding_page_scores_by_cosine_and_draws_no_tree(runs):
    text = (runs / "embedding" / "results.html").read_text()
    page = Page(text)
    assert {"metrics", "task-t2i", "task-i2t"} <= set(page.sections) and "code-tree" not in page.sections
    assert "cosine" in text and "log p" not in text


def test_search_ranks_the_runs_own_queries_as_evaluate_did(runs):
    from genretr.search import LoadedRun

    run = runs / "genius"
    loaded = LoadedRun(run)
    queries = loaded.ds.queries("test", "t2i")[:12]
    found = loaded.search(queries, 10)
    per_query = json.loads((run / "per_query.json").read_text())["t2i"]
    ranks = dict(zip(per_query["query_ids"], per_query["rank"]))
    for q, hits in zip(queries, found):
        assert next((h.rank for h in hits if h.relevant), 0) == ranks[q.id]
        assert all(a.score >= b.score - 1e-5 for a, b in zip(hits, hits[1:]))  # ranked by score (float noise)
    # a query typed anew is embedded as the encode stage embedded it
    fresh = loaded.embed(queries)
    torch.testing.assert_close(fresh, loaded.emb.queries([q.id for q in queries]), atol=1e-4, rtol=1e-4)
    again = loaded.search(queries, 10, fresh)
    for a, b in zip(again, found):  # the same ranking up to near-ties of float noise: the same scores in order
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


def test_loading_a_run_resolves_its_config_and_leaves_the_process_hydra_config_alone(runs):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from genretr.search import LoadedRun

    before = HydraConfig.instance().cfg
    loaded = LoadedRun(runs / "embedding")
    assert HydraConfig.instance().cfg is before
    assert "${" not in OmegaConf.to_yaml(loaded.cfg) and str(runs / "cache") in loaded.cfg.paths.cache_dir


def test_search_cli_prints_ranked_items_and_takes_an_image(runs, tmp_path, capsys):
    from genretr.search import LoadedRun

    run = runs / "embedding"
    out = genretr("genretr.search", str(run), "a small red circle", "a big blue square", "--k", "3", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [len(x["hits"]) for x in lines] == [3, 3] and lines[0]["query"]["task"] == "t2i"
    assert "ms per query" in out.stderr
    # an image query: the image of a test i2t query, saved as a file, ranks as that query did
    loaded = LoadedRun(run)
    q = loaded.ds.queries("test", "i2t")[0]
    Image.fromarray(np.asarray(loaded.ds.images[q.image])).save(tmp_path / "q.png")
    code, out, err = search(capsys, run, "--image", tmp_path / "q.png", "--k", "5", "--json")
    assert code == 0, err[-2000:]
    got = [h["score"] for h in json.loads(out)["hits"]]
    assert got == pytest.approx([h.score for h in loaded.search([q], 5)[0]], abs=1e-4)


@pytest.mark.parametrize("case", ["not_a_run", "other_config", "incomplete", "unreadable_image", "empty"])
def test_search_errors_are_one_line(runs, tmp_path, case, capsys):
    run = runs / "genius"
    args = [str(run), "a red circle"]
    if case == "not_a_run":
        args[0] = str(tmp_path)
        want = "not a finished genretr run"
    elif case == "other_config":  # the decoder trained for another number of epochs: another train key
        copy = tmp_path / "copy"
        shutil.copytree(run, copy, symlinks=True)
        config = copy / ".hydra" / "config.yaml"
        config.write_text(config.read_text().replace("max_epochs: 2", "max_epochs: 3"))
        args[0] = str(copy)
        want = "made by other genretr code or config"
    elif case == "incomplete":
        copy = tmp_path / "copy"
        shutil.copytree(run, copy, symlinks=True)
        recorded = json.loads((copy / "artifacts.json").read_text())
        cache = tmp_path / "cache"
        for stage, path in recorded.items():  # a cache holding every artifact but the trained decoder
            if stage != "train":
                (cache / stage / Path(path).parent.name).mkdir(parents=True)
                shutil.copytree(path, cache / stage / Path(path).parent.name / "artifact")
        config = copy / ".hydra" / "config.yaml"
        config.write_text(config.read_text().replace(str(Path(recorded["dataset"]).parents[2]), str(cache)))
        (copy / "artifacts.json").write_text(json.dumps(
            {s: str(cache / s / Path(p).parent.name / "artifact") for s, p in recorded.items()}))
        args[0] = str(copy)
        want = "is incomplete: the train artifact"
    elif case == "unreadable_image":
        args = [str(run), "--image", str(ROOT / "README.md")]
        want = "not a readable image"
    else:
        args = [str(run)]
        want = "give a query text"
    code, _, err = search(capsys, *args)
    assert code == 2, err[-2000:]
    err = err.strip().splitlines()
    assert err[-1].startswith("genretr: error:") and want in err[-1], err


# ---------------------------------------------------------------- genretr.add
def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


def cache_state(run: Path) -> dict:
    root = artifact(run, "dataset").parents[2]
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and ".lock" not in p.name}


def test_added_copies_of_pool_images_get_their_originals_identifiers_and_are_found(runs, tmp_path, capsys):
    from omegaconf import open_dict

    from genretr.search import LoadedRun

    run = copy_of(runs / "genius", tmp_path)
    before = LoadedRun(run)
    q = before.ds.queries("test", "t2i")[0]
    original = q.relevant[0]
    table = before.identified
    lines = []
    for k, iid in enumerate([original, before.ds.splits["test"].pools["t2i"][1]]):
        Image.fromarray(np.asarray(before.ds.images[before.ds.items[iid].image])).save(tmp_path / f"{k}.png")
        lines.append(json.dumps({"id": f"copy{k}", "image": f"{k}.png"}))
    (tmp_path / "items.jsonl").write_text("\n".join(lines) + "\n")
    cache, results = cache_state(run), (run / "results.json").read_text()

    code, out, err = search_add(capsys, run, tmp_path / "items.jsonl")
    assert code == 0, err[-2000:]
    assert f"added copy0 (image) to t2i  id {table.text(original)}" in out  # the trained quantizer's code, again
    after = LoadedRun(run)
    assert "copy0" in after.ds.splits["test"].pools["t2i"] and after.table.text("copy0") == table.text(original)
    with open_dict(after.cfg):
        after.cfg.eval.top_k = 1000  # every item of the beams' identifiers (the copy comes after its original)
    hits = {h.item_id: h for h in after.search([q])[0]}
    assert "copy0" in hits and hits["copy0"].score == pytest.approx(hits[original].score)  # same identifier
    assert cache_state(run) == cache and (run / "results.json").read_text() == results  # the run is untouched

    saved = {p.name: p.read_bytes() for p in (run / "added").iterdir()}
    code, out, _ = search_add(capsys, run, tmp_path / "items.jsonl")  # again: nothing changes
    assert code == 0 and "nothing to add" in out
    assert {p.name: p.read_bytes() for p in (run / "added").iterdir()} == saved


def test_ssid_describes_an_added_image_as_it_described_the_pool(ssid_run, tmp_path, capsys):
    """SSID's keywords generator identified the caption-less test images from the run's describer; a copy of one,
    added without a text, is described by the same captioner (kept in the identify artifact) and gets the same
    identifier (collisions: share), so that a search returns it beside its original."""
    from omegaconf import open_dict

    from genretr.identifiers.base import DESCRIBER_DIR
    from genretr.search import LoadedRun

    run = copy_of(ssid_run, tmp_path)
    before = LoadedRun(run)
    assert (before.identify_artifact() / DESCRIBER_DIR / "captioner.json").is_file()
    q = before.ds.queries("test", "t2i")[0]
    original = q.relevant[0]
    assert not before.identified.text(original).startswith("item ")  # written from a caption, not the fallback
    Image.fromarray(np.asarray(before.ds.images[before.ds.items[original].image])).save(tmp_path / "copy.png")
    (tmp_path / "items.jsonl").write_text(json.dumps({"id": "copy", "image": "copy.png"}) + "\n")
    code, out, err = search_add(capsys, run, tmp_path / "items.jsonl")
    assert code == 0, err[-2000:]
    assert f"added copy (image) to t2i  id {before.identified.text(original)}" in out
    after = LoadedRun(run)
    with open_dict(after.cfg):
        after.cfg.eval.top_k = 1000
    hits = {h.item_id: h for h in after.search([q])[0]}
    assert "copy" in hits and hits["copy"].score == pytest.approx(hits[original].score)


@pytest.mark.parametrize("case", ["corpus_id", "twice", "no_side", "bad_json", "not_utf8", "other_content"])
def test_bad_additions_are_one_line_and_write_nothing(runs, tmp_path, capsys, case):
    run = copy_of(runs / "genius", tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    lines = {"corpus_id": ['{"id": "test/img0", "image": "x.png"}'],
             "twice": ['{"id": "a", "image": "x.png"}', '{"id": "a", "image": "x.png"}'],
             "no_side": ['{"id": "a"}'], "bad_json": ['{"id": "a", '],
             "not_utf8": ['{"id": "a", "image": "x.png"}', b'{"id": "b", "text": "caf\xe9"}'],  # Latin-1 text
             "other_content": ['{"id": "a", "image": "x.png"}']}[case]
    want = {"corpus_id": "items.jsonl [line 1]: item id 'test/img0' is already in the run's corpus",
            "twice": "items.jsonl [line 2]: item id 'a' appears twice", "no_side": "has neither \"image\" nor \"text\"",
            "bad_json": "items.jsonl [line 1]: malformed JSON", "not_utf8": "items.jsonl [line 2]: not UTF-8 text",
            "other_content": "item id 'a' is already in"}[case]
    if case == "other_content":  # first added as a black image, then offered as a white one
        (tmp_path / "items.jsonl").write_text(lines[0] + "\n")
        assert search_add(capsys, run, tmp_path / "items.jsonl")[0] == 0
        Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(tmp_path / "x.png")
    before = sorted(p.name for p in run.rglob("*"))
    (tmp_path / "items.jsonl").write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    code, _, err = search_add(capsys, run, tmp_path / "items.jsonl")
    assert code == 2 and err.strip().splitlines()[-1].startswith("genretr: error:") and want in err, err
    assert sorted(p.name for p in run.rglob("*")) == before


def test_schemes_that_need_training_refuse_with_their_reason(runs):
    from omegaconf import open_dict

    from genretr.add import add
    from genretr.errors import GenretrError
    from genretr.search import LoadedRun

    loaded = LoadedRun(runs / "genius")
    for target, reason in [("string.StringIdentifier", "a string ID is arbitrary"),
                           ("atomic.AtomicIdentifier", "an atomic ID is a new token"),
                           ("numeric.NumericIdentifier", "a numeric ID is arbitrary")]:
        with open_dict(loaded.cfg):
            loaded.cfg.identifier._target_ = f"genretr.identifiers.{target}"
        with pytest.raises(GenretrError, match=f"cannot add items without retraining: {reason}"):
            add(loaded, [("new", "a red circle", None, "x")])


def test_a_second_addition_continues_the_identifiers_of_the_first(runs, tmp_path, capsys, monkeypatch):
    """The scheme assigns against the run's identifiers and every earlier addition (unique tokens continue)."""
    from genretr.identifiers.genius import GeniusIdentifier

    run = copy_of(runs / "genius", tmp_path)
    seen, assign = [], GeniusIdentifier.assign
    monkeypatch.setattr(GeniusIdentifier, "assign",
                        lambda self, items, x, art, table: (seen.append(list(table.item_ids)), assign(self, items, x,
                                                                                                  art, table))[1])
    for k in range(2):
        Image.fromarray(np.full((8, 8, 3), 60 * k, np.uint8)).save(tmp_path / f"{k}.png")
        (tmp_path / f"{k}.jsonl").write_text(json.dumps({"id": f"new{k}", "image": f"{k}.png"}) + "\n")
        assert search_add(capsys, run, tmp_path / f"{k}.jsonl")[0] == 0
    assert "new0" not in seen[0] and seen[1][-1] == "new0" and len(seen[1]) == len(seen[0]) + 1


def test_stacked_images_index_as_one_array():
    from genretr.additions import StackedImages, with_images

    base, extra = np.arange(24).reshape(3, 2, 2, 2), 100 + np.arange(16).reshape(2, 2, 2, 2)
    both = with_images(base, extra)
    assert isinstance(both, StackedImages) and both.shape == (5, 2, 2, 2) and len(both) == 5
    whole = np.concatenate([base, extra])
    assert np.array_equal(both[[4, 0, 3]], whole[[4, 0, 3]]) and np.array_equal(both[-1], whole[-1])
    more = with_images(both, extra[:1])
    assert more.base is base and np.array_equal(more[5], extra[0]) and with_images(base, None) is base


def search_add(capsys, *args):
    from genretr.add import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err
