"""The encode stage's instruction-aware, every-task setting (GENIUS Sec. 4.1; genretr.stages.encode)."""
import math

import numpy as np
import torch

from genretr.stages import encode as E
from genretr.data.datamodules import QueryTargetPairs
from genretr.data.schema import INSTRUCTIONS, Query
from genretr.encoders.contrastive import ContrastiveEncoder
from genretr.encoders.towers import SmallCNN
from genretr.data.embeddings import Embeddings
from genretr.pipeline import Pipeline


def test_query_text_prepends_the_instruction_only_when_asked():
    q = Query("q", "t2i", ("x",), INSTRUCTIONS["t2i"], text="a red circle")
    img = Query("v", "i2i", ("x",), INSTRUCTIONS["i2i"], image=3)
    assert E.query_text(q, False) == "a red circle"
    assert E.query_text(q, True) == f"{INSTRUCTIONS['t2i']} a red circle"
    assert E.query_text(img, False) is None and E.query_text(img, True) == INSTRUCTIONS["i2i"]


class _Features(torch.nn.Module):
    """A text tower over given feature rows (stands in for MiniLM's cached features)."""

    def __init__(self, dim=8, out=16):
        super().__init__()
        self.proj = torch.nn.Linear(dim, out)

    def forward(self, x):
        return self.proj(x)


def _encoder():
    torch.manual_seed(0)
    return ContrastiveEncoder(SmallCNN(out_dim=16, width=4), _Features())


def test_pairs_of_mixed_sides_train_and_mask_false_negatives():
    images = np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    texts = ["cap a", "cap b", "instr", "instr cap a"]
    row = {t: i for i, t in enumerate(texts)}
    feats = torch.randn(len(texts), 8)
    sides = [((None, "instr cap a"), (0, None), "q1", "img0"),  # text -> image
             ((1, "instr"), (None, "cap a"), "q2", "capA"),  # image (+instruction) -> text
             ((1, "instr"), (None, "cap b"), "q2", "capB"),  # the same query's other relevant text
             ((2, "cap b"), (3, "cap a"), "q3", "pair3")]  # image + text -> pair
    pairs = QueryTargetPairs(images, sides, feats, row)
    batch = torch.utils.data.default_collate([pairs[i] for i in range(len(pairs))])
    assert batch["q_has_image"].tolist() == [False, True, True, True]
    assert batch["t_has_text"].tolist() == [False, True, True, True]
    enc = _encoder().eval()
    q = enc.embed_sides(batch["q_image"], batch["q_has_image"], batch["q_text"], batch["q_has_text"])
    # a pair side is the renormalised sum of its normalised towers (CLIP-SF)
    fused = enc.fuse(enc.embed_images(batch["q_image"][3:]), enc.embed_texts(batch["q_text"][3:]))
    assert torch.allclose(q[3:], fused, atol=1e-5)
    assert torch.allclose(q[0], enc.embed_texts(batch["q_text"][:1])[0], atol=1e-5)
    enc.train()
    loss = enc.training_step(batch, 0)
    assert math.isfinite(loss.item())
    loss.backward()
    assert enc.image_tower.head.weight.grad is not None and enc.text_tower.proj.weight.grad is not None
    # with rows 1 and 2 (one query, two relevant texts) masked from each other, a batch of only those two
    # rows has no negatives left: each row's loss is exactly 0
    two = {k: v[1:3] for k, v in batch.items()}
    assert enc.training_step(two, 0).item() < 1e-6


def test_instruction_aware_encoder_on_every_task_separates_same_text_queries(make_cfg, tmp_path):
    tasks = "[t2i,t2it,t2t,i2t]"
    cfg = make_cfg("method=embedding", f"dataset.tasks={tasks}", f"eval.tasks={tasks}", "dataset.universal=true",
                   "encoder.instructions=true", "encoder.fit.tasks=all", "eval.pool=universal")
    p = Pipeline(cfg, tmp_path / "run")
    m = p.run()
    assert set(m) == {"t2i", "t2it", "t2t", "i2t"}
    ds = p.dataset()
    emb = Embeddings.load(p.store.artifact("encode", p.keys["encode"]))
    t2i = [q for q in ds.queries("test", "t2i")]
    t2it = {q.text: q for q in ds.queries("test", "t2it")}
    same = [(a, t2it[a.text]) for a in t2i if a.text in t2it][:5]
    assert same
    a, b = emb.queries([x.id for x, _ in same]), emb.queries([y.id for _, y in same])
    assert (a - b).norm(dim=1).min() > 1e-3  # same words, different instructions: different vectors
    # the towers' vectors of every fused row are kept (GENIUS's h reads them): pair items, and image queries
    # embedded with their instruction; fused again they give the rows' own vectors
    from genretr.data.schema import PAIR, item_side, query_text

    pairs = [ds.items[i] for i in emb.item_ids if ds.items[i].modality == PAIR]
    images = ds.queries("test", "i2t")
    kept = emb.parts.lookup([item_side(x) for x in pairs] + [(q.image, query_text(q, True)) for q in images])
    assert pairs and images and all(v is not None for v in kept)
    encoder, kept = p.ctx.trained_encoder(ds), torch.from_numpy(np.stack(kept))
    with torch.no_grad():
        fused = encoder.fuse(kept[:, 0], kept[:, 1])
    torch.testing.assert_close(fused, torch.cat([emb.items([x.id for x in pairs]), emb.queries([q.id for q in images])]))
    # the caption-only setting embeds them identically (and is a different encode artifact)
    plain = Pipeline(make_cfg("method=embedding", f"dataset.tasks={tasks}", f"eval.tasks={tasks}",
                              "dataset.universal=true", run="plain"), tmp_path / "plain")
    plain.run()
    emb2 = Embeddings.load(plain.store.artifact("encode", plain.keys["encode"]))
    assert plain.keys["encode"] != p.keys["encode"]
    assert torch.allclose(emb2.queries([x.id for x, _ in same]), emb2.queries([y.id for _, y in same]))


def test_loader_workers_read_the_images_and_change_no_vector(make_cfg, tmp_path):
    """loader_workers=2: worker processes read the training pairs from the memory-mapped images; the encode key
    and every vector are the same as with none."""
    runs = {}
    for workers in (0, 2):
        p = Pipeline(make_cfg("method=embedding", "stage=encode", f"loader_workers={workers}", run=f"w{workers}",
                              cache=tmp_path / f"cache{workers}"), tmp_path / f"w{workers}")
        p.run()
        runs[workers] = (p.keys["encode"], Embeddings.load(p.store.artifact("encode", p.keys["encode"])))
    (key0, a), (key2, b) = runs[0], runs[2]
    assert key0 == key2
    assert torch.equal(a.item_vecs, b.item_vecs) and torch.equal(a.query_vecs, b.query_vecs)


class _Arithmetic(torch.nn.Module):
    """Image vector: the mean pixel per channel; text vector: its feature row; fused: image + 2 text."""

    def embed_images(self, x):
        return x.float().mean(dim=(1, 2))

    def embed_texts(self, x):
        return x.float()

    def fuse(self, a, b):
        return a + 2 * b


def test_embed_assembles_image_text_and_fused_rows_blockwise_as_row_by_row(monkeypatch):
    from genretr.data.schema import Item
    from genretr.errors import GenretrError
    import pytest

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(5, 4, 4, 3), dtype=np.uint8)
    texts = ["a", "b", "c"]
    features = torch.from_numpy(rng.normal(size=(3, 3)).astype(np.float32))
    items = [Item("i0", "image", image=0), Item("t0", "text", text="b"), Item("p0", "image,text", image=3, text="c"),
             Item("i1", "image", image=4), Item("p1", "image,text", image=1, text="a")]
    queries = [Query("q0", "t2i", ("i0",), text="a"), Query("q1", "i2t", ("t0",), image=2)]
    ds = type("DS", (), {"images": images})()
    monkeypatch.setattr(E, "BLOCK_ROWS", 2)  # several blocks per kind of row
    item_vecs, query_vecs, parts = E.embed(_Arithmetic(), ds, items, queries, texts, features, batch_size=2)

    def row(image, text):  # the per-row semantics the blockwise assembly must keep
        img = torch.from_numpy(images[image]).float().mean(dim=(0, 1)) if image is not None else None
        txt = features[texts.index(text)] if text else None
        return img + 2 * txt if img is not None and txt is not None else (img if img is not None else txt)

    torch.testing.assert_close(item_vecs, torch.stack([row(x.image, x.text) for x in items]))
    torch.testing.assert_close(query_vecs, torch.stack([row(q.image, q.text) for q in queries]))
    # the towers' vectors of the fused rows (p0, p1), unfused, for GENIUS's h(image, text)
    assert parts.images == [1, 3] and parts.texts == ["a", "c"]
    got = parts.lookup([(3, "c"), (1, "a"), (0, None), (1, "c")])
    assert got[2] is None  # not a fused row's side
    for (image, text), v in zip([(3, "c"), (1, "a"), (1, "c")], [got[0], got[1], got[3]]):
        torch.testing.assert_close(torch.from_numpy(v), torch.stack([row(image, None), row(None, text)]))
    with pytest.raises(GenretrError, match="item 'e0' has neither"):
        E.embed(_Arithmetic(), ds, [*items, Item("e0", "text")], queries, texts, features, batch_size=2)


def test_an_image_to_caption_dataset_trains_the_encoder_on_the_same_captions(make_cfg, tmp_path):
    """i2t queries alone (image -> its captions) give the encoder the (image, caption) pairs that t2i queries give:
    the same images, the same captions.  (They gave none, and the encoder silently stayed untrained.)"""
    both = Pipeline(make_cfg("method=embedding", run="both"), tmp_path / "both").dataset()
    i2t = Pipeline(make_cfg("method=embedding", "dataset.tasks=[i2t]", "eval.tasks=[i2t]", run="i2t"),
                   tmp_path / "i2t").dataset()
    (a_index, a_caps), (b_index, b_caps) = E.caption_groups(both), E.caption_groups(i2t)
    assert len(a_index) > 0 and np.array_equal(a_index, b_index)
    assert [sorted(c) for c in a_caps] == [sorted(c) for c in b_caps]


def test_training_without_pairs_is_one_clear_error(make_cfg, tmp_path):
    import pytest

    from genretr.errors import GenretrError

    p = Pipeline(make_cfg("method=embedding", "dataset.tasks=[i2i]", "eval.tasks=[i2i]"), tmp_path / "run")
    with pytest.raises(GenretrError, match="^encoder: no training pairs"):
        p.run()


def test_text_features_are_freed_once_the_texts_are_embedded(make_cfg, tmp_path, monkeypatch):
    """The MiniLM features (1.55 GB at the 1M-caption pool) are gone when embed() has embedded the texts, before it
    assembles the item vectors: the trained encoder keeps no trainer, which would hold them through its datamodule."""
    import gc
    import weakref

    features, alive = [], []
    prepare, release = E.prepare_texts, E.release_freed_memory

    def recorded(*args, **kwargs):
        out = prepare(*args, **kwargs)
        features.append(weakref.ref(out))
        return out

    def released():  # called after training, then inside embed() once the texts are embedded
        gc.collect()
        alive.append(features[0]() is not None)
        release()

    monkeypatch.setattr(E, "prepare_texts", recorded)
    monkeypatch.setattr(E, "release_freed_memory", released)
    Pipeline(make_cfg("method=embedding", "stage=encode", "encoder.fit.max_epochs=1"), tmp_path / "run").run()
    assert alive == [True, False]
