"""SSID identifier generation: parsing and repairs, retries and fallback, collisions, the resumable cache."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from genretr.data.schema import Item
from genretr.errors import DataError, GenretrError
from genretr.generators.keywords import KeywordsGenerator
from genretr.identifiers.base import IdentifierContext, IdTable
from genretr.identifiers.ssid import AnswerCache, SsidIdentifier, identifier_words, parse

TRAIN = ["a small red circle above a blue square", "a big green triangle on the left", "a small blue square",
         "a yellow star next to a red circle", "a large green star", "a tiny purple triangle at the bottom"]


def Ctx(workdir: Path, cache_dir: Path | None = None, **kw) -> IdentifierContext:
    kw.setdefault("train_texts", list(TRAIN))
    kw.setdefault("images", np.zeros((8, 4, 4, 3), np.uint8))
    return IdentifierContext(workdir=workdir, cache_dir=cache_dir, **kw)


class Scripted:
    """A generator answering from per-item scripts (one answer per attempt); records what it was asked."""

    needs_text = False

    def __init__(self, scripts: dict[str, list[str]], fail_after: int | None = None):
        self.scripts, self.asked, self.fail_after = scripts, [], fail_after

    def fit(self, train_texts, groups=()):
        pass

    def generate(self, requests):
        if self.fail_after is not None and len(self.asked) >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.asked += requests
        return [self.scripts[r.item_id][sum(q.item_id == r.item_id for q in self.asked) - 1] for r in requests]

    def signature(self):
        return {"generator": "scripted"}


def items(n, prefix="i"):
    return [Item(f"{prefix}{k}", "image", image=k) for k in range(n)]


def test_parse_strict_repaired_and_deviating():
    p = parse("caption:Two men near bushes.\nidentifier:two men - bushes\nreason:Both show two men.", 10)
    assert (p.kind, p.caption, p.identifier, p.reason) == ("strict", "Two men near bushes.", "two men - bushes",
                                                           "Both show two men.")
    near_misses = [
        "Caption: Two men.\nIdentifier: two men - bushes\nReason: both.",  # case, spaces
        "caption : Two men.\n\nidentifier -  two men - bushes\nreason = both.",  # "Identifier -", blank line
        "caption:Two men.\nidentifier:two men - bushes\nThey both show two men.",  # missing "reason:" label
        '- **Caption:** "Two men."\n- **Identifier:** "two men - bushes"\n- **Reason:** both.',  # bullets, quotes
        "Sure! Here it is:\ncaption:Two men.\nidentifier:two men - bushes.\nreason:both.",  # stray line, period
    ]
    for raw in near_misses:
        p = parse(raw, 10)
        assert p.kind == "repaired" and p.identifier == "two men - bushes" and p.reason, raw
    deviating = {"caption:x\nidentifier:two men are standing outside next to some very green bushes today\nreason:y":
                 "12 words", "caption:x\nidentifier:two men": "reason", "": "empty", "caption:x\nidentifier:\nreason:y":
                 "identifier", "identifier: ---\ncaption:x\nreason:y": "no word"}
    for raw, problem in deviating.items():
        p = parse(raw, 10)
        assert p.kind == "" and problem in p.problem, (raw, p.problem)


def test_identifier_words():
    assert identifier_words("Cheerleaders-chairs \u2013 Spectators.") == ["cheerleaders", "-", "chairs", "-",
                                                                         "spectators"]
    assert identifier_words("- a - - b -") == ["a", "-", "b"]


def test_keywords_build_table_reasons_summary_and_unseen_test_captions(tmp_path):
    its = items(4) + [Item("t0", "text", text="a purple triangle at the bottom")]
    known = {"i0": ["a small red circle above a blue square"], "i1": ["a big green triangle on the left"],
             "i2": ["a large green star"]}
    described = []

    def describe(ids):
        described.extend(ids)
        return ["a yellow star next to a red circle" for _ in ids]

    ctx = Ctx(tmp_path / "w", tmp_path / "cache", item_captions=known, describe=describe)
    ctx.workdir.mkdir()
    table = SsidIdentifier(KeywordsGenerator()).build(its, np.zeros((5, 4), np.float32), ctx)
    assert described == ["i3"]  # only the item without text or train caption is captioned
    assert table.text("i0") == "small red circle - blue square"
    assert table.text("t0") == "purple triangle - bottom"  # a text item uses its own text
    assert table.vocab[:2] == ["<pad>", "</s>"] and "-" in table.vocab
    assert set(table.reasons) == {it.id for it in its} and all(table.reasons.values())
    again = IdTable.load(_saved(table, tmp_path / "saved"))  # the rationales are saved with the table
    assert again.reasons == table.reasons and again.subset(["i0"]).reasons == {"i0": table.reasons["i0"]}
    summary = json.loads((ctx.workdir / "ssid_summary.json").read_text())
    assert summary["outcomes"] == {"strict": 5, "repaired": 0, "retried": 0, "fallback": 0}
    assert summary["collided_items"] == 0 and Path(summary["cache"]).parent == ctx.cache_dir


def test_describe_all_writes_every_image_from_the_describer(tmp_path):
    """describe=all: one describer for every image item, train captions unused; a text item keeps its text."""
    its = items(2) + [Item("t0", "text", text="a purple triangle at the bottom")]
    described = []

    def describe(ids):
        described.extend(ids)
        return ["a yellow star next to a red circle" for _ in ids]

    ctx = Ctx(tmp_path, item_captions={"i0": ["a small red circle above a blue square"]}, describe=describe)
    table = SsidIdentifier(KeywordsGenerator(), describe="all").build(its, np.zeros((3, 4), np.float32), ctx)
    assert described == ["i0", "i1"] and table.text("i0").startswith("yellow star")
    assert table.text("t0") == "purple triangle - bottom"
    other = SsidIdentifier(KeywordsGenerator()).cache_path(ctx)
    assert SsidIdentifier(KeywordsGenerator(), describe="all").cache_path(ctx) != other
    with pytest.raises(GenretrError, match="describe=some"):
        SsidIdentifier(KeywordsGenerator(), describe="some")


def test_answer_cache_key_follows_the_describing_captioner(tmp_path):
    """A text-only generator's answers depend on the captioner that describes caption-less items; an MLLM's
    do not (it sees the image)."""
    ctx = Ctx(tmp_path)
    path = {k: SsidIdentifier(KeywordsGenerator(), captioner={"input": k}).cache_path(ctx)
            for k in ("embedding", "pixels")}
    assert path["embedding"] != path["pixels"]
    mllm = {k: SsidIdentifier(Scripted({}), captioner={"input": k}).cache_path(ctx) for k in ("embedding", "pixels")}
    assert mllm["embedding"] == mllm["pixels"]


def test_text_generator_without_caption_names_the_item(tmp_path):
    ctx = Ctx(tmp_path, item_captions={"i0": ["a red circle"]})
    with pytest.raises(GenretrError, match="caption for item 'i1'"):
        SsidIdentifier(KeywordsGenerator()).build(items(2), np.zeros((2, 4), np.float32), ctx)


def test_retry_with_stricter_prompt_then_fallback_counts_outcomes(tmp_path):
    good = "caption:a red circle\nidentifier:red circle\nreason:it is red"
    sentence = "caption:x\nidentifier:" + " ".join(["word"] * 12) + "\nreason:y"
    gen = Scripted({"i0": [good], "i1": ["Caption: a blue square\nIdentifier - blue square\nit is blue"],
                    "i2": [sentence, "caption:a green star\nidentifier:green star\nreason:green"],
                    "i3": ["", "", ""]})
    ctx = Ctx(tmp_path, item_captions={"i3": ["a small yellow star in the corner"]})
    table = SsidIdentifier(gen, retries=2, batch_size=8).build(items(4), np.zeros((4, 2), np.float32), ctx)
    assert [table.text(f"i{k}") for k in range(3)] == ["red circle", "blue square", "green star"]
    assert table.text("i3") == "small yellow star - corner"  # the caption's distinctive words
    summary = json.loads((tmp_path / "ssid_summary.json").read_text())
    assert summary["outcomes"] == {"strict": 1, "repaired": 1, "retried": 1, "fallback": 1}
    asked = [r.item_id for r in gen.asked]
    assert asked == ["i0", "i1", "i2", "i3", "i2", "i3", "i3"]  # retries ask only the deviating items
    assert all("previous answer did not follow" in r.prompt for r in gen.asked[4:])
    assert "previous answer" not in gen.asked[0].prompt and "caption:a yellow star" not in gen.asked[0].prompt
    assert gen.asked[3].prompt.endswith("caption:a small yellow star in the corner\nidentifier:\nreason:")


def test_an_empty_written_caption_falls_back_to_the_item_id(tmp_path):
    """A captioner that wrote nothing: the keywords generator answers the empty template, whose field names are
    no words of an identifier, so the fallback names the item."""
    ctx = Ctx(tmp_path, describe=lambda ids: ["" for _ in ids])
    table = SsidIdentifier(KeywordsGenerator(), retries=1).build(items(2), np.zeros((2, 2), np.float32), ctx)
    assert [table.text(f"i{k}") for k in range(2)] == ["item i0", "item i1"]
    assert "caption" not in table.reasons["i0"]


@pytest.mark.parametrize("mode", ["disambiguate", "share"])
def test_collisions_counted_and_disambiguated(tmp_path, mode):
    same = "caption:c\nidentifier:red circle\nreason:r"
    gen = Scripted({"i0": [same], "i1": [same], "i2": ["caption:c\nidentifier:blue square\nreason:r"]})
    table = SsidIdentifier(gen, collisions=mode).build(items(3), np.zeros((3, 2), np.float32), Ctx(tmp_path))
    summary = json.loads((tmp_path / "ssid_summary.json").read_text())
    assert summary["collided_items"] == 2 and summary["collision_groups"] == 1
    if mode == "disambiguate":
        assert [table.text("i0"), table.text("i1")] == ["red circle #0", "red circle #1"] and table.collisions() == 0
    else:
        assert table.items_of(table.tokens("i0")) == ["i0", "i1"]
    assert table.text("i2") == "blue square"


def test_cache_resumes_after_a_kill_and_drops_a_torn_line(tmp_path):
    scripts = {f"i{k}": [f"caption:c{k}\nidentifier:shape {k}\nreason:r{k}"] for k in range(6)}
    ctx = Ctx(tmp_path / "w", tmp_path / "cache")
    ctx.workdir.mkdir()
    scheme = SsidIdentifier(Scripted(scripts, fail_after=2), batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        scheme.build(items(6), np.zeros((6, 2), np.float32), ctx)
    path = scheme.cache_path(ctx)
    assert len(path.read_text().splitlines()) == 2  # the first batch was flushed
    with open(path, "a") as f:
        f.write('{"item_id": "i2", "caption": "c2", "ident')  # a kill mid-write
    gen = Scripted(scripts)
    table = SsidIdentifier(gen, batch_size=2).build(items(6), np.zeros((6, 2), np.float32), ctx)
    assert [r.item_id for r in gen.asked] == ["i2", "i3", "i4", "i5"]  # finished items are not asked again
    assert [table.text(f"i{k}") for k in range(6)] == [f"shape {k}" for k in range(6)]
    lines = path.read_text().splitlines()
    assert [json.loads(x)["item_id"] for x in lines] == [f"i{k}" for k in range(6)]
    assert set(json.loads(lines[0])) >= {"item_id", "caption", "identifier", "reason", "raw", "outcome"}
    again = Scripted(scripts)
    SsidIdentifier(again, batch_size=2).build(items(6), np.zeros((6, 2), np.float32), ctx)
    assert again.asked == []
    assert SsidIdentifier(again, cache=False).generate([], ctx) == {}


def test_corrupt_cache_line_is_a_data_error(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"item_id": "a"}\nnot json\n{"item_id": "b"}\n')
    with pytest.raises(DataError, match="line 2"):
        AnswerCache(path)


def test_mllm_item_without_caption_sees_its_image(tmp_path):
    imgs = np.zeros((2, 8, 8, 3), np.uint8)
    imgs[1] += 7
    gen = Scripted({"i0": ["caption:c\nidentifier:a\nreason:r"], "i1": ["caption:c\nidentifier:b\nreason:r"]})
    ctx = Ctx(tmp_path, item_captions={"i0": ["a red circle"]}, images=imgs)
    SsidIdentifier(gen).build(items(2), np.zeros((2, 2), np.float32), ctx)
    assert gen.asked[0].caption == "a red circle" and gen.asked[1].caption is None
    assert int(gen.asked[1].image.max()) == 7
    with pytest.raises(GenretrError, match="neither a caption nor an image"):
        SsidIdentifier(Scripted({})).build(items(1), np.zeros((1, 2), np.float32), Ctx(tmp_path, images=None))


def test_assign_asks_the_generator_for_new_items_and_continues_the_groups(tmp_path):
    """genretr.add (issue 19): the generator answers for each new item (its own text as the caption, else its
    image); an identifier already held takes the next counter; a word the decoder never saw is refused; the
    identify artifact (`ctx.workdir`, the build's answer cache included) is not written to."""
    answer = "caption:c\nidentifier:{}\nreason:r".format
    gen = Scripted({"i0": [answer("red circle")], "i1": [answer("red circle")], "i2": [answer("blue square")],
                    "n0": [answer("blue square")], "n1": [answer("square")], "n2": [answer("Red Circle")],
                    "n3": [answer("green circle")]})
    scheme = SsidIdentifier(gen)
    table = scheme.build(items(3), np.zeros((3, 2), np.float32), Ctx(tmp_path))
    files = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[1] += 9
    new = [Item("n0", "pair", image=0, text="a blue square"), Item("n1", "image", image=1)]
    added = scheme.assign(new, np.zeros((2, 2), np.float32), Ctx(tmp_path, images=images), table)
    assert [added.text("n0"), added.text("n1")] == ["blue square #1", "square"]
    assert added.vocab == table.vocab
    asked = {r.item_id: r for r in gen.asked}
    assert asked["n0"].caption == "a blue square" and asked["n1"].caption is None
    assert int(asked["n1"].image.max()) == 9
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == files
    for iid, token in (("n2", "#2"), ("n3", "green")):  # the third "red circle"'s counter; an unseen word
        with pytest.raises(GenretrError, match=f"ssid: new item '{iid}' needs the token '{token}'"):
            scheme.assign([Item(iid, "text", text="a circle")], np.zeros((1, 2), np.float32), Ctx(tmp_path), table)


def test_assign_describes_a_new_image_with_the_runs_describer(tmp_path):
    """A text-only generator reads, for a new image without text, the caption of the captioner saved in the
    identify artifact (``describer/``), given the new item's embedding; without one it refuses in one line."""
    from genretr.identifiers.base import DESCRIBER_DIR

    known = {"i0": ["a small red circle above a blue square"], "i1": ["a big green triangle on the left"]}
    scheme = SsidIdentifier(KeywordsGenerator(), collisions="share")
    table = scheme.build(items(2), np.zeros((2, 4), np.float32), Ctx(tmp_path, item_captions=known))
    seen = []

    class Describer:
        def describe(self, vecs):
            seen.append(np.asarray(vecs))
            return ["a big green triangle on the left"] * len(vecs)

    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    new = [Item("n0", "image", image=0), Item("n1", "text", text="a small red circle above a blue square")]
    ctx = Ctx(tmp_path, item_captions=known, load_captioner=lambda path: Describer())
    with pytest.raises(GenretrError, match="ssid: new item 'n0' has no text, and the run saved no captioner"):
        scheme.assign(new, x, ctx, table)
    (tmp_path / DESCRIBER_DIR).mkdir()
    (tmp_path / DESCRIBER_DIR / "captioner.json").write_text("{}")
    added = scheme.assign(new, x, ctx, table)
    assert len(seen) == 1 and np.array_equal(seen[0], x[:1])  # only the image without text, by its embedding
    assert added.text("n0") == table.text("i1") and added.text("n1") == table.text("i0")  # collisions: share
    Describer.pixels = True  # a pixel captioner reads the new image (ctx.images, by Item.image)
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    scheme.assign([Item("n2", "image", image=1)], x[:1], replace(ctx, images=images), table)
    assert np.array_equal(seen[-1], images[1:])
    other = replace(ctx, train_texts=TRAIN[:3])  # not the captions the run's identifiers were written from
    with pytest.raises(GenretrError, match="differs from the one that wrote the run's identifiers"):
        scheme.assign(new[1:], x[1:], other, table)


def _saved(table, path):
    path.mkdir()
    table.save(path)
    return path


def test_a_training_item_is_read_through_one_caption_unless_asked_for_all(tmp_path):
    """Like for like with a described test item (one caption) and with GRACE's semantic IDs: `captions=first`."""
    known = {"i0": ["a red circle", "a big circle", "a round red shape"]}
    ctx = Ctx(tmp_path, item_captions=known)
    first = SsidIdentifier(KeywordsGenerator()).requests(items(1), ctx)
    every = SsidIdentifier(KeywordsGenerator(), captions="all").requests(items(1), ctx)
    assert first[0].captions == ("a red circle",) and every[0].captions == tuple(known["i0"])
    with pytest.raises(GenretrError, match="identifier.captions"):
        SsidIdentifier(KeywordsGenerator(), captions="some")
