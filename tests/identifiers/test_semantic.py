"""genretr.identifiers.semantic (GRACE semantic IDs: captions, generated for unseen images, Sec. 3.3)."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from genretr.captioner import Captioner, fit_captioner, words
from genretr.errors import GenretrError
from genretr.identifiers.base import IdentifierContext, SPECIAL_TOKENS
from genretr.identifiers.common import append_counters
from genretr.identifiers.semantic import SemanticIdentifier

CONF = Path(__file__).resolve().parents[2] / "conf"
TEMPLATES = ["a red circle on the left", "two blue squares at the top", "a small green triangle, far right",
             "nothing but sand"]
TINY = {"model": dict(d_model=32, num_layers=1, num_heads=2, d_ff=64, dropout=0.0, prefix_len=2, prefix_hidden=64,
                      lr=1e-2, warmup_steps=5),
        "fit": dict(max_epochs=20, batch_size=24), "max_len": 12}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def toy(n=48, n_train=36, d=16):
    """Items around 4 directions; train items have captions of their direction (mostly its template), test none."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, d))
    label = np.arange(n) % 4
    x = centers[label] + 0.3 * rng.normal(size=(n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    items = [SimpleNamespace(id=f"{'train' if i < n_train else 'test'}/img{i}", modality="image", text=None)
             for i in range(n)]
    captions = {items[i].id: [TEMPLATES[label[i]], TEMPLATES[label[i]], f"variant of {TEMPLATES[label[i]]}"]
                for i in range(n_train)}
    return items, x, label, captions


def ctx(tmp_path, captions):
    return IdentifierContext(train_texts=[c for cs in captions.values() for c in cs], workdir=tmp_path, seed=0,
                           progress=False, item_captions=captions, fit_captioner=fit_captioner)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    items, x, label, captions = toy()
    workdir = tmp_path_factory.mktemp("semantic")
    table = SemanticIdentifier(captioner=TINY).build(items, x, ctx(workdir, captions))
    return table, items, x, label, captions, workdir


def test_train_items_get_their_own_first_caption(built):
    table, items, _, _, captions, _ = built
    for it in items[:36]:
        assert [table.vocab[t] for t in table.tokens(it.id)[:-1]] == words(captions[it.id][0])
    assert table.vocab[:2] == SPECIAL_TOKENS and table.new_tokens == []


def test_test_items_get_the_captioners_caption(built):
    table, items, x, label, _, workdir = built
    cap = Captioner.load(workdir / "captioner")  # saved into ctx.workdir
    generated = cap.describe_words(x[36:])
    assert [[table.vocab[t] for t in table.tokens(it.id)[:-1]] for it in items[36:]] == generated
    assert np.mean([g == words(TEMPLATES[b]) for g, b in zip(generated, label[36:])]) > 0.8


def test_shared_captions_share_one_identifier(built):
    """collisions=share (GRACE): the 12 items of a template all sit behind that one identifier."""
    table, items, _, label, _, _ = built
    for b in range(4):
        members = [it.id for it, lb in zip(items, label) if lb == b]
        ids = {table.tokens(i) for i in members}
        assert len(ids) <= 2  # the template (train and well-captioned test items), rarely a miss
        assert len(table.items_of(table.tokens(members[0]))) >= 9
    assert table.collisions() >= 40


def test_disambiguate_and_caption_choice(tmp_path):
    items, x, label, captions = toy(n=36, n_train=36)  # all captioned: no captioner is trained
    table = SemanticIdentifier(captioner=TINY, collisions="disambiguate").build(items, x, ctx(tmp_path, captions))
    assert table.collisions() == 0 and not (tmp_path / "captioner").exists()
    assert table.new_tokens == [f"#{j}" for j in range(9)] and table.vocab[-9:] == table.new_tokens
    for j, it in enumerate(it for it, lb in zip(items, label) if lb == 1):
        assert table.text(it.id) == " ".join(words(TEMPLATES[1]) + [f"#{j}"])
    rand = SemanticIdentifier(captioner=TINY, train_caption="random", seed=3).build(items, x, ctx(tmp_path, captions))
    picked = [rand.text(it.id) for it in items]
    assert all(p in (" ".join(words(c)) for c in captions[it.id]) for p, it in zip(picked, items))
    assert sum(p.startswith("variant") for p in picked) not in (0, len(items))


def test_text_items_use_their_own_text(tmp_path):
    items = [SimpleNamespace(id="c0", modality="text", text="A cat, sitting."),
             SimpleNamespace(id="c1", modality="text", text="A cat, sitting.")]
    t = SemanticIdentifier(captioner=TINY).build(items, np.eye(2, dtype=np.float32), ctx(tmp_path, {}))
    assert t.text("c0") == "a cat , sitting ." and t.items_of(t.tokens("c0")) == ["c0", "c1"]


def test_append_counters():
    assert append_counters([["a"], ["b"], ["a"], ["a"]]) == [["a", "#0"], ["b"], ["a", "#1"], ["a", "#2"]]


def test_errors(tmp_path):
    items, x, _, captions = toy()
    with pytest.raises(GenretrError, match="no item has training captions"):
        SemanticIdentifier(captioner=TINY).build(items, x, ctx(tmp_path, {}))
    with pytest.raises(GenretrError, match="collisions=merge"):
        SemanticIdentifier(captioner=TINY, collisions="merge")


def test_yaml_takes_the_captioner_group():
    cfg = OmegaConf.create({"identifier": OmegaConf.load(CONF / "identifier" / "semantic.yaml"),
                            "captioner": OmegaConf.load(CONF / "captioner" / "default.yaml")})
    scheme = instantiate(cfg.identifier)
    assert isinstance(scheme, SemanticIdentifier) and scheme.collisions == "share"
    assert scheme.captioner_cfg.model.d_model == cfg.captioner.model.d_model


def test_generated_captions_for_every_image(tmp_path):
    """train_caption=generated: train images are captioned by the captioner too (one caption distribution)."""
    items, x, _, captions = toy(n=12, n_train=8)
    cfg = {**TINY, "fit": dict(max_epochs=2, batch_size=24)}
    table = SemanticIdentifier(captioner=cfg, train_caption="generated").build(items, x, ctx(tmp_path, captions))
    generated = Captioner.load(tmp_path / "captioner").describe_words(x)
    assert [[table.vocab[t] for t in table.tokens(it.id)[:-1]] for it in items] == generated


def test_pixel_captioner_reads_the_item_images(tmp_path):
    """captioner=pixels: the captioner is fitted on and describes the items' images (ctx.images), not x."""
    items, x, _, captions = toy(n=12, n_train=8)
    for k, it in enumerate(items):
        it.image = k
    imgs = np.random.default_rng(0).integers(0, 255, size=(12, 8, 8, 3)).astype(np.uint8)
    cfg = {**TINY, "input": "pixels", "cnn": dict(cnn_width=2, grid=1, cell_dim=2), "fit": dict(max_epochs=1,
                                                                                              batch_size=24)}
    c = ctx(tmp_path, captions)
    c.images = imgs
    table = SemanticIdentifier(captioner=cfg).build(items, x, c)
    cap = Captioner.load(tmp_path / "captioner")
    assert cap.pixels
    assert [table.text(it.id).split() for it in items[8:]] == cap.describe_words(imgs[8:])
    bright = np.full((2, 8, 8, 3), 200, np.uint8)
    bright[1] = 10

    class ByBrightness:  # a pixel captioner whose caption follows the image it is given
        pixels = True

        def describe_words(self, images, batch_size=256):
            assert np.asarray(images).shape[1:] == (8, 8, 3)
            return [["small"] if image.mean() > 100 else ["red"] for image in np.asarray(images)]

    new = [SimpleNamespace(id=f"new{k}", modality="image", text=None, image=k) for k in (1, 0)]  # genretr.add's rows
    added = SemanticIdentifier(captioner=cfg).assign(new, x[:2], IdentifierContext(
        workdir=tmp_path, load_captioner=lambda path: ByBrightness(), images=bright), table)
    assert [added.text("new1"), added.text("new0")] == ["red", "small"]
    c.images = None
    with pytest.raises(GenretrError, match="has no image"):
        SemanticIdentifier(captioner=cfg).build(items, x, c)


def saved(folder):
    """The context genretr.add gives `assign`: the identify artifact and the captioner loader."""
    return IdentifierContext(workdir=folder, load_captioner=Captioner.load)


def test_assign_captions_new_images_with_the_saved_captioner(built):
    """Issue 19: a new image takes the saved captioner's caption (as built test items do), a new text item its
    own text; a word the decoder never saw is refused in one line."""
    table, items, x, label, _, workdir = built
    scheme = SemanticIdentifier(captioner=TINY)
    new = [SimpleNamespace(id=f"new{i}", modality="image", text=None) for i in range(4)]
    new.append(SimpleNamespace(id="said", modality="text", text="two blue squares at the top"))
    added = scheme.assign(new, np.concatenate([x[36:40], x[:1]]), saved(workdir), table)
    assert added.vocab == table.vocab
    for n, it in zip(new, items[36:40]):  # the same vector, the same caption as the built test item's
        assert added.tokens(n.id) == table.tokens(it.id)
    assert [added.vocab[t] for t in added.tokens("said")[:-1]] == words(TEMPLATES[1])
    with pytest.raises(GenretrError, match="new item 'odd' needs the token 'zebra'"):
        scheme.assign([SimpleNamespace(id="odd", modality="text", text="a zebra")], x[:1], saved(workdir), table)
    unique = SemanticIdentifier(captioner=TINY, collisions="disambiguate")
    held = unique.build(items, x, ctx(workdir, built[4]))
    group = sum(1 for i in held.item_ids  # the items holding template 1's caption, counters aside
                if [held.vocab[t] for t in held.tokens(i)[:-1] if not held.vocab[t].startswith("#")]
                == words(TEMPLATES[1]))
    assert group >= 9
    if f"#{group}" in held.vocab:
        twin = unique.assign([new[-1]], x[:1], saved(workdir), held)
        assert twin.vocab[twin.tokens("said")[-2]] == f"#{group}"
    else:
        with pytest.raises(GenretrError, match=f"needs the token '#{group}'"):
            unique.assign([new[-1]], x[:1], saved(workdir), held)
