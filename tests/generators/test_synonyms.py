"""Synonym classes learned from caption groups (genretr.generators.synonyms)."""
import random

from genretr.generators.keywords import KeywordsGenerator, content_runs
from genretr.generators.synonyms import learn_synonyms

COLOURS = {"red": ["red", "crimson"], "blue": ["blue", "azure"]}
SHAPES = {"circle": ["circle", "disc"], "square": ["square", "box"]}


def groups(n=60, seed=0):
    """Items of two objects (distinct colours and shapes), five captions each, every concept in a random synonym."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        objs = list(zip(rng.sample(list(COLOURS), 2), rng.sample(list(SHAPES), 2)))
        out.append([" and ".join(f"a {rng.choice(COLOURS[c])} {rng.choice(SHAPES[s])}" for c, s in objs)
                    for _ in range(5)])
    return out


def words_of(text):
    return {w for run in content_runs(text) for w in run}


def test_substitutes_form_one_class_and_co_occurring_words_do_not():
    canon = learn_synonyms(groups(), words_of, threshold=0.1)
    assert canon["crimson"] == canon["red"] and canon["azure"] == canon["blue"]
    assert canon["disc"] == canon["circle"] and canon["box"] == canon["square"]
    assert len({canon[w] for w in ("red", "blue", "circle", "square")}) == 4  # a caption says both colours


def test_rare_words_and_a_zero_threshold_learn_nothing():
    assert learn_synonyms(groups(), words_of, threshold=0.0) == {}
    assert learn_synonyms(groups(n=1), words_of, threshold=0.1, min_count=50) == {}


def test_keywords_name_each_concept_with_its_class_word():
    data = groups()
    g = KeywordsGenerator(synonyms=0.1)
    g.fit([c for caps in data for c in caps], data)
    a = g.compose(["a crimson disc and an azure box"])[0]
    b = g.compose(["a red circle and a blue square"])[0]
    assert a == b and len(a.split()) == 5  # "x y - z w": one word per concept, both items alike
    assert g.signature()["synonyms"]["threshold"] == 0.1
    assert "synonyms" not in KeywordsGenerator().signature()  # caches written without classes keep their key


def test_reason_details_relate_the_rest_of_the_caption():
    g = KeywordsGenerator(max_words=2, max_phrases=1, details=True)
    g.fit(["a red circle", "a blue square on the left"])
    identifier, reason = g.compose(["a red circle above a blue square"])
    assert len(identifier.split()) == 2
    assert reason.endswith(f"it also mentions {'blue square' if 'circle' in identifier else 'red circle'}.")
    assert g.signature()["details"] is True


def test_plus_before_a_determiner_is_the_conjunction():
    assert content_runs("a red plus sign, plus a blue disc") == [["red", "plus", "sign"], ["blue", "disc"]]
