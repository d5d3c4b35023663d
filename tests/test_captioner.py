"""genretr.captioner: a tiny embedding → caption model (GRACE Sec. 3.3 / Appendix A)."""
import numpy as np
import pytest

from genretr.captioner import Captioner, build_vocab, fit_captioner, join_words, words
from genretr.errors import GenretrError

TEMPLATES = ["a red circle on the left", "two blue squares at the top",
             "a small green triangle, far right", "nothing but sand ."]
TINY = {"model": dict(d_model=32, num_layers=1, num_heads=2, d_ff=64, dropout=0.0, prefix_len=2, prefix_hidden=64,
                      lr=1e-2, warmup_steps=5),
        "fit": dict(max_epochs=15, batch_size=8), "max_len": 12}


def toy(n=40, d=16, seed=0):
    """Vectors around 4 directions; the caption is the template of the vector's direction."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(size=(4, d))
    label = np.arange(n) % 4
    x = centers[label] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), label


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def captioner():
    x, label = toy()
    return fit_captioner(x, [[TEMPLATES[b]] for b in label], TINY, seed=0)


def test_learns_to_reproduce_the_captions(captioner):
    for seed, beams in ((0, 1), (1, 1), (1, 3)):  # the training vectors, then fresh ones, greedy and beam
        x, label = toy(seed=seed)
        out = captioner.describe(x, num_beams=beams)
        assert np.mean([o == join_words(words(TEMPLATES[b])) for o, b in zip(out, label)]) > 0.8, out[:4]
    ws = captioner.describe_words(x[:1])
    assert ws == [words(TEMPLATES[label[0]])]
    with pytest.raises(RuntimeError, match="not attached"):  # the fitted model keeps no trainer, nor its loader's pairs
        captioner.model.trainer


def test_pad_is_no_word(captioner, monkeypatch):
    """An under-trained captioner's best beam may hold <pad>: the caption leaves it out and ends at </s>."""
    import torch

    from genretr.decoding import engine

    red, circle = captioner.index["red"], captioner.index["circle"]
    tokens = torch.tensor([[[red, 0, circle, 1, red]]])  # (queries, beams, length): red <pad> circle </s> red
    monkeypatch.setattr(engine, "beam_search", lambda *a, **k: type("R", (), {"tokens": tokens})())
    assert captioner.describe_words(toy(n=1)[0]) == [["red", "circle"]]


def test_save_and_load_describe_the_same(captioner, tmp_path):
    captioner.save(tmp_path / "cap")
    again = Captioner.load(tmp_path / "cap")
    x, _ = toy(seed=2)
    assert again.vocab == captioner.vocab and again.describe(x) == captioner.describe(x)
    with pytest.raises(GenretrError, match="no saved captioner"):
        Captioner.load(tmp_path / "nothing")


def test_words_vocab_and_encoding(captioner):
    assert words("A small-ish Cat, on the top-left.") == ["a", "small-ish", "cat", ",", "on", "the", "top-left", "."]
    assert join_words(["a", "cat", ",", "far", "right", "."]) == "a cat, far right."
    vocab = build_vocab(["b a a", "a c"], min_count=2)
    assert vocab == ["<pad>", "</s>", "<unk>", "a"]
    ids = captioner.encode("a red zebra " + "on " * 20)
    assert len(ids) == 12 and ids[-1] == 1 and ids[2] == 2  # truncated to max_len, unknown word -> <unk>


def test_bad_input():
    x, _ = toy()
    with pytest.raises(GenretrError, match="caption lists"):
        fit_captioner(x, [["a cat"]], TINY)
    with pytest.raises(GenretrError, match="no non-empty"):
        fit_captioner(x[:2], [[], ["  "]], TINY)
