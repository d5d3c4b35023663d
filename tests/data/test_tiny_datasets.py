"""`debug=tiny` on every dataset: conf/dataset_size/<dataset>_tiny.yaml cuts real data to a small
deterministic subset (the adapter's own limit), and a run gets through the dataset stage -- and an
embedding evaluation -- in seconds, on the format-exact fixtures of test_karpathy, test_mbeir and
test_precomputed."""
from __future__ import annotations

import pytest

from genretr.pipeline import Pipeline
from genretr.validate import validate
from tests.data import test_karpathy as karpathy_fx
from tests.data import test_mbeir as mbeir_fx
from tests.data import test_precomputed as precomputed_fx

TINY_IMAGES = 30  # conf/dataset_size/{flickr30k,coco,precomputed}_tiny.yaml; mbeir's: 30 queries a file
EXTRA_TRAIN = 32  # Flickr30K fixture's 3 train images + these: more than tiny keeps


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """$GENRETR_DATA, where every conf/dataset/*.yaml looks for its files."""
    monkeypatch.setenv("GENRETR_DATA", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def flickr_fixture(root):
    extra = [(f"x{k}.png", None, "train", karpathy_fx.solid((k, 2 * k, 100)), karpathy_fx.captions(f"x{k}", 2))
             for k in range(EXTRA_TRAIN)]
    return karpathy_fx.Fixture(root / "flickr30k", "dataset_flickr30k.json", "flickr30k-images",
                               karpathy_fx.FLICKR + extra, coco=False)


def mbeir_fixture(root, extra_queries=40, extra_candidates=120):
    """The M-BEIR tree, its t2i test query and pool files grown past tiny's 30 queries and 100 candidates."""
    tree = mbeir_fx.Tree(root / "M-BEIR")
    queries, pool = mbeir_fx.COCO_T2I
    tree.entries[queries] += [mbeir_fx.query(f"9:{100 + k}", "text", 0, ["9:2"], f"green number {k}")
                              for k in range(extra_queries)]
    tree.entries[pool] += [mbeir_fx.cand(f"9:{1000 + k}", "image", img=mbeir_fx.B) for k in range(extra_candidates)]
    tree.write()
    return tree


def precomputed_fixture(root):
    """The precomputed fixture with 40 more captioned train clips (its features, ids and caption features too)."""
    import numpy as np

    (root / "precomputed").mkdir()
    fx = precomputed_fx.Fixture(root / "precomputed")
    rng = np.random.default_rng(1)
    fx.ids += [f"extra{k}.wav" for k in range(40)]
    fx.vecs = np.concatenate([fx.vecs, rng.normal(size=(40, precomputed_fx.D)).astype(np.float32)])
    fx.captions += [dict(item_id=f"extra{k}.wav", caption=f"extra sound {k}", split="train") for k in range(40)]
    fx.cap_vecs = np.concatenate([fx.cap_vecs, rng.normal(size=(40, precomputed_fx.D)).astype(np.float32)])
    fx.write()
    return fx


def tiny_cfg(make_cfg, *overrides):
    cfg = make_cfg(*overrides)
    validate(cfg)
    return cfg


def test_flickr30k_tiny_keeps_the_first_images_of_each_split(make_cfg, data_root, tmp_path):
    fx = flickr_fixture(data_root)
    cfg = tiny_cfg(make_cfg, "dataset=flickr30k", "stage=dataset")
    assert cfg.dataset.max_images_per_split == TINY_IMAGES and "splits" not in cfg.dataset
    ds = Pipeline(cfg, tmp_path / "run").dataset()
    train = [e["filename"] for e in fx.data["images"] if e["split"] == "train"][:TINY_IMAGES]
    assert ds.splits["train"].pools["t2i"] == [f"train/{f}" for f in train]
    assert [len(ds.splits[s].pools["t2i"]) for s in ("train", "val", "test")] == [TINY_IMAGES, 1, 2]


def test_coco_tiny_dataset_stage(make_cfg, data_root, tmp_path):
    fx = karpathy_fx.Fixture(data_root / "coco", "dataset_coco.json", ".", karpathy_fx.COCO, coco=True)
    cfg = tiny_cfg(make_cfg, "dataset=coco", "stage=dataset")
    assert cfg.dataset.max_images_per_split == TINY_IMAGES and "splits" not in cfg.dataset
    assert Pipeline(cfg, tmp_path / "run").run() is None
    ds = Pipeline(cfg, tmp_path / "run").dataset()  # reused from the cache
    assert len(ds.images) == len(fx.data["images"])  # fewer than tiny's limit in every split: all kept


def test_mbeir_tiny_keeps_the_first_queries_and_candidates(make_cfg, data_root, tmp_path):
    mbeir_fixture(data_root)
    cfg = tiny_cfg(make_cfg, "dataset=mbeir", "stage=dataset")
    assert (cfg.dataset.max_queries_per_file, cfg.dataset.max_pool_size) == (30, 100)
    ds = Pipeline(cfg, tmp_path / "run").dataset()
    assert len(ds.queries("test", "t2i")) == 30 and len(ds.splits["test"].pools["t2i"]) == 100
    assert len(ds.queries("test", "i2t")) == 2 and ds.tasks("test") == ["i2t", "t2i"]


def test_precomputed_tiny_keeps_the_first_items_of_each_split(make_cfg, data_root, tmp_path):
    fx = precomputed_fixture(data_root)
    cfg = tiny_cfg(make_cfg, "dataset=precomputed", "eval.tasks=[t2a]", "stage=dataset")
    assert cfg.dataset.max_items_per_split == TINY_IMAGES and "splits" not in cfg.dataset
    ds = Pipeline(cfg, tmp_path / "run").dataset()
    train = list(dict.fromkeys(c["item_id"] for c in fx.captions if c["split"] == "train"))
    assert ds.splits["train"].pools["t2a"] == train[:TINY_IMAGES] and len(ds.splits["test"].pools["t2a"]) == 2


@pytest.mark.parametrize("dataset", ["flickr30k", "mbeir", "precomputed"])
def test_tiny_embedding_run_evaluates_on_real_formats(dataset, make_cfg, data_root, tmp_path):
    """The whole embedding run (encoder trained 2 tiny epochs, or the given vectors) under debug=tiny; with the
    given vectors, its R@1 is the one computed here from the fixture's own arrays."""
    fx = {"flickr30k": flickr_fixture, "mbeir": mbeir_fixture, "precomputed": precomputed_fixture}[dataset](data_root)
    extra = {"flickr30k": ["eval.tasks=[t2i,i2t]"], "mbeir": ["eval.tasks=[t2i,i2t]"],
             "precomputed": ["eval.tasks=[t2a]",
                             f"dataset.caption_features={data_root}/precomputed/caption_features.npy"]}
    cfg = tiny_cfg(make_cfg, f"dataset={dataset}", "method=embedding", *extra[dataset])
    p = Pipeline(cfg, tmp_path / "run")
    metrics = p.run()
    assert set(metrics) == set(cfg.eval.tasks)
    assert all(m["queries"] > 0 and m["R@1"] <= m["MRR@10"] <= m["R@10"] for m in metrics.values())
    if dataset == "precomputed":
        import numpy as np

        ds = p.dataset()
        pool, queries = ds.splits["test"].pools["t2a"], ds.queries("test", "t2a")
        items = fx.vecs[[fx.ids.index(i) for i in pool]]
        row = {(c["item_id"], c["caption"]): k for k, c in enumerate(fx.captions)}
        caps = fx.cap_vecs[[row[(q.relevant[0], q.text)] for q in queries]]
        cos = (caps / np.linalg.norm(caps, axis=1, keepdims=True)) @ (items / np.linalg.norm(items, axis=1)[:, None]).T
        top1 = [pool[int(k)] for k in cos.argmax(1)]
        assert metrics["t2a"]["R@1"] == pytest.approx(np.mean([t in q.relevant for t, q in zip(top1, queries)]))


def test_mbeir_without_a_train_split_evaluates_an_untrained_encoder(make_cfg, data_root, tmp_path):
    """A test-only M-BEIR config: the untrained encoder's embeddings need no train split."""
    mbeir_fixture(data_root)
    cfg = tiny_cfg(make_cfg, "dataset=mbeir", "~dataset.splits.train", "method=embedding",
                   "encoder.fit.max_epochs=0", "eval.tasks=[t2i,i2t]")
    metrics = Pipeline(cfg, tmp_path / "run").run()
    assert metrics["t2i"]["queries"] == 30 and metrics["i2t"]["queries"] == 2
