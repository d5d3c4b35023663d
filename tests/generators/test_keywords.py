"""The offline keywords generator: concept-level identifiers by tf-idf, in the Sec. III-E answer format."""
import pytest

from genretr.errors import GenretrError
from genretr.generators import Request
from genretr.generators.keywords import KeywordsGenerator, content_runs
from genretr.identifiers.ssid import parse

TRAIN = ["a small red circle above a blue square", "a big green triangle on the left", "a small blue square",
         "a yellow star next to a red circle", "a large green star", "a red circle on the left"]


def fitted(**kw):
    g = KeywordsGenerator(**kw)
    g.fit(TRAIN)
    return g


def test_content_runs_split_at_function_words():
    assert content_runs("A small red circle above a blue square.") == [["small", "red", "circle"], ["blue", "square"]]
    assert content_runs("Two young, White men are near many bushes") == [["two", "young", "white", "men"],
                                                                          ["bushes"]]


def test_concept_level_identifier_and_reason():
    identifier, reason = fitted().compose(["a small red circle above a blue square"])
    assert identifier == "small red circle - blue square"
    assert "small red circle" in reason and "blue square" in reason


def test_distinctive_words_win_under_a_word_budget():
    g = fitted(max_words=3, max_phrase_words=2)
    # "purple" never occurs in training (high idf); "red circle" is common: the purple phrase is kept
    assert g.compose(["a red circle next to a purple hexagon"])[0] == "purple hexagon"
    # a word every caption of the item uses outweighs one used once (both unseen in training)
    assert fitted(max_words=1, max_phrase_words=1).compose(["a blue kite", "a kite in the sky", "a kite"])[0] == "kite"


def test_generate_answers_in_the_strict_format_deterministically():
    g = fitted()
    reqs = [Request("a", "prompt", "a yellow star next to a red circle"),
            Request("b", "prompt", None, ("a large green star", "a big green star"))]
    out = g.generate(reqs)
    assert out == g.generate(reqs)
    parsed = [parse(o, 10) for o in out]
    assert [p.kind for p in parsed] == ["strict", "strict"]
    assert parsed[0].caption == "a yellow star next to a red circle"
    assert parsed[1].identifier == "large green star"
    assert g.signature()["docs"] == len(TRAIN)


def test_needs_a_caption():
    assert KeywordsGenerator.needs_text
    with pytest.raises(GenretrError, match="caption for item 'x'"):
        fitted().generate([Request("x", "prompt")])
    assert fitted().compose(["the of and"]) == ("", "")
    # a written but empty caption (an under-trained captioner's) names nothing; SSID then falls back
    assert not parse(fitted().generate([Request("x", "prompt", "")])[0], 10).kind
    with pytest.raises(GenretrError):
        KeywordsGenerator(max_words=0)


def test_each_known_caption_is_read_once(monkeypatch):
    """The shown caption is one of the item's captions: composing from both lists would count it twice."""
    gen = KeywordsGenerator()
    gen.fit(["a red circle", "a blue square", "a big circle"])
    seen = []
    real = gen.compose
    monkeypatch.setattr(gen, "compose", lambda caps: seen.append(list(caps)) or real(caps))
    gen.generate([Request("x", "p", "a red circle", ("a red circle", "a big circle")),
                  Request("y", "p", "a blue square")])
    assert seen == [["a red circle", "a big circle"], ["a blue square"]]
