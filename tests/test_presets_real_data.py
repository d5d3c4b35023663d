"""Every paper preset on the real datasets it applies to (issue 16), under debug=tiny on the format-exact
miniatures of tests/data: a preset's dataset-specific keys (conf/preset_data/<preset>/<dataset>.yaml) reach
that dataset only, and the whole run -- encoder, identifiers, decoder, constrained search -- evaluates."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from genretr.pipeline import Pipeline
from genretr.validate import validate
from tests.conftest import TINY, compose_cfg
from tests.data import test_karpathy as karpathy_fx
from tests.data import test_mbeir as mbeir_fx
from tests.data.test_tiny_datasets import flickr_fixture, mbeir_fixture, precomputed_fixture
from tests.backbones.checkpoints import write_checkpoint
from tests.encoders.test_clip import write_tiny_clip

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
REAL_DATASETS = ("flickr30k", "coco", "mbeir", "precomputed")
SHAPES_ONLY = ("splits", "tasks", "universal", "captions_per_image", "max_objects", "edit_fraction")


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """$GENRETR_DATA, where every conf/dataset/*.yaml looks for its files."""
    monkeypatch.setenv("GENRETR_DATA", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


@pytest.fixture(scope="module")
def plain_datasets(tmp_path_factory):
    """Each real dataset's config without a preset."""
    root = tmp_path_factory.mktemp("plain")
    return {d: compose_cfg([*TINY, f"dataset={d}"], root / "run", root / "cache").dataset for d in REAL_DATASETS}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_no_shapes_key_reaches_another_dataset(experiment, make_cfg, plain_datasets):
    """A shapes-only key appears on another dataset only where that dataset has it (M-BEIR's `splits`, its
    `universal` pool), with the dataset's own value unless the preset has a `preset_data/<preset>/<dataset>.yaml`."""
    for dataset, plain in plain_datasets.items():
        cfg = make_cfg(f"experiment={experiment}", f"dataset={dataset}")
        own = (CONF / "preset_data" / cfg.hydra.runtime.choices["preset_data"] / f"{dataset}.yaml").is_file()
        leaked = [k for k in SHAPES_ONLY
                  if k in cfg.dataset and (k not in plain or (cfg.dataset[k] != plain[k] and not own))]
        assert not leaked, f"experiment={experiment} dataset={dataset}: shapes keys {leaked}"


def test_presets_size_shapes_as_before(make_cfg, tmp_path):
    """The moved keys still apply on shapes (and debug=tiny still wins over them)."""
    def full_size(*overrides):
        return compose_cfg(["logger=none", *overrides], tmp_path / "run", tmp_path / "cache")

    genius = full_size("experiment=genius_table1")
    assert dict(genius.dataset.splits) == {"train": 1000, "val": 50, "test": 250}
    assert list(genius.eval.tasks) == list(genius.dataset.tasks) and len(genius.eval.tasks) == 8
    assert genius.dataset.universal is True
    cart = full_size("experiment=cart_table7")
    assert dict(cart.dataset.splits) == {"train": 450, "val": 50, "test": 100}
    assert dict(make_cfg("experiment=cart_table7").dataset.splits) == {"train": 60, "val": 10, "test": 20}


def test_genius_on_mbeir_reads_its_query_files(make_cfg):
    cfg = make_cfg("experiment=genius_table1", "dataset=mbeir")
    assert [s.queries for s in cfg.dataset.splits.test] == [mbeir_fx.COCO_T2I[0], mbeir_fx.COCO_I2T[0]]
    assert list(cfg.eval.tasks) == ["t2i", "i2t"] and cfg.dataset.universal == {}


def run(make_cfg, *overrides):
    cfg = make_cfg(*overrides)
    validate(cfg)
    pipe = Pipeline(cfg, Path(cfg.hydra.runtime.output_dir))
    metrics = pipe.run()
    ds = pipe.dataset()
    for task in cfg.eval.tasks:  # every test query of the tiny data was searched
        assert metrics[task]["queries"] == len(ds.queries("test", task)) > 0
    return cfg, metrics


def test_grace_on_flickr30k(make_cfg, data_root):
    flickr_fixture(data_root)
    cfg, metrics = run(make_cfg, "experiment=grace_table1", "identifier=structured", "dataset=flickr30k",
                       "eval.tasks=[t2i,i2t]")
    assert cfg.dataset.max_images_per_split == 30 and set(metrics) == {"t2i", "i2t"}


def test_ssid_on_coco(make_cfg, data_root):
    karpathy_fx.Fixture(data_root / "coco", "dataset_coco.json", ".", karpathy_fx.COCO, coco=True)
    run(make_cfg, "experiment=ssid_table1", "identifier=ssid", "dataset=coco")


@pytest.mark.parametrize("preset,identifier,dataset", [("grace_table1", "atomic", "coco"),
                                                        ("ssid_table1", "ssid", "flickr30k"),
                                                        ("cart_base", "cart", "coco")])
def test_presets_on_the_other_karpathy_dataset(make_cfg, data_root, preset, identifier, dataset):
    """GRACE and SSID on flickr30k and coco, CART on both (issue 16): the pairs the tests above leave out."""
    if dataset == "coco":
        karpathy_fx.Fixture(data_root / "coco", "dataset_coco.json", ".", karpathy_fx.COCO, coco=True)
    else:
        flickr_fixture(data_root)
    cfg, metrics = run(make_cfg, f"experiment={preset}", f"identifier={identifier}", f"dataset={dataset}")
    assert cfg.dataset.name == dataset and set(metrics) == set(cfg.eval.tasks)


def test_cart_caption_enhancement_on_precomputed_features(make_cfg, data_root, caplog):
    """CART's captioner writes a query for every item; a token-input decoder never reads their vectors, so no
    encoder is needed to embed them (ImageBind features come without one)."""
    precomputed_fixture(data_root)
    with caplog.at_level(logging.INFO):
        cfg, _ = run(make_cfg, "experiment=cart_base", "dataset=precomputed", "eval.tasks=[t2a]",
                     "captioner.fit.max_epochs=10")  # tiny's 1 epoch writes empty captions
    assert cfg.train.pseudo_queries_for == "all"
    said = [r.getMessage().split() for r in caplog.records if r.getMessage().startswith("pseudo-queries:")]
    written = sum(int(m[1]) for m in said if m[2] == "written,")
    empty = sum(int(m[1]) for m in said if m[2] == "of")  # "N of M written captions are empty"
    assert written > 0 and written + empty == 30 + 2  # a caption for each of tiny's 30 train and 2 test items


@pytest.mark.slow
def test_cart_on_flickr30k(make_cfg, data_root):
    flickr_fixture(data_root)
    run(make_cfg, "experiment=cart_base", "dataset=flickr30k")


def test_genius_on_mbeir_with_frozen_clip(make_cfg, data_root, tmp_path, caplog):
    """GENIUS's unified model on M-BEIR's task files, CLIP as the encoder: its towers are frozen, so the
    preset's encoder epochs (which would move the temperature only) are skipped, with one warning."""
    mbeir_fixture(data_root)
    clip = write_tiny_clip(tmp_path / "clip")
    with caplog.at_level(logging.WARNING):
        cfg, metrics = run(make_cfg, "experiment=genius_table1", "dataset=mbeir", "encoder=clip",
                           f"encoder.model.image_tower.pretrained={clip}",
                           f"encoder.model.text_tower.pretrained={clip}")
    assert cfg.encoder.fit.max_epochs > 0 and set(metrics) == {"t2i", "i2t"}
    assert sum("both towers are frozen" in r.getMessage() for r in caplog.records) == 1


def test_genius_universal_pool_on_mbeir(make_cfg, data_root):
    mbeir_fixture(data_root)
    cfg, metrics = run(make_cfg, "experiment=genius_table2", "dataset=mbeir",
                       f"+dataset.universal.test={mbeir_fx.UNION}")
    assert cfg.eval.pool == "universal" and set(metrics) == {"t2i", "i2t"}


@pytest.mark.parametrize("family", ["qwen25vl", pytest.param("llava", marks=pytest.mark.slow),
                                    pytest.param("idefics", marks=pytest.mark.slow)])
def test_mllm_checkpoint_on_flickr30k(make_cfg, data_root, tmp_path, family):
    """SSID on the Flickr30K miniature with a tiny checkpoint written by `save_pretrained` (the real load path,
    its processor reading the dataset's images): each family writes the identifiers and learns them."""
    flickr_fixture(data_root)
    path = write_checkpoint(family, tmp_path / family)
    cfg, metrics = run(make_cfg, "identifier=ssid", f"backbone={family}", f"backbone.model.pretrained={path}",
                       "dataset=flickr30k", "train.memorize_repeat=1", "backbone.fit.max_epochs=1",
                       "decoding.num_beams=5", "eval.tasks=[t2i]")
    assert cfg.generator._target_.endswith("MLLMGenerator") and cfg.generator.pretrained == str(path)
