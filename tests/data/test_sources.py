"""`genretr.data.sources.check_sources`: an absent input of a dataset config is one line naming the path and its
config key, before any stage; the shipped configs pass on complete trees (each adapter's `source_paths`)."""
from __future__ import annotations

import pytest

from genretr.data.sources import check_sources
from genretr.errors import DataError
from tests.data.test_karpathy import FLICKR, Fixture as KarpathyFixture
from tests.data.test_mbeir import COCO_T2I, TRAIN, TSV, Tree
from tests.data.test_precomputed import Fixture as PrecomputedFixture


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """GENRETR_DATA: where the shipped dataset configs look."""
    monkeypatch.setenv("GENRETR_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def test_every_input_of_each_adapter_is_named(make_cfg, data_root):
    """Each adapter's inputs, as its config names them."""
    cfg = make_cfg("dataset=flickr30k")
    with pytest.raises(DataError, match=rf"^{data_root}/flickr30k/dataset_flickr30k.json: file not found "
                                        r"\(dataset.json_path; nothing is downloaded"):
        check_sources(cfg.dataset)
    cfg = make_cfg("dataset=mbeir")
    with pytest.raises(DataError, match=rf"^{data_root}/M-BEIR: directory not found \(dataset.root;"):
        check_sources(cfg.dataset)
    cfg = make_cfg("dataset=precomputed", "dataset.caption_features=cf.npy")
    with pytest.raises(DataError, match=r"features.npy: file not found \(dataset.features;"):
        check_sources(cfg.dataset)


def test_mbeir_names_the_first_absent_file_by_its_key(make_cfg, data_root):
    tree = Tree(data_root / "M-BEIR")
    check_sources(make_cfg("dataset=mbeir").dataset)  # the shipped config's files are all in the tree
    (tree.root / "query/test/mbeir_mscoco_task3_test.jsonl").unlink()
    absent = r"mbeir_mscoco_task3_test.jsonl: file not found \(dataset.splits.test\[1\].queries;"
    with pytest.raises(DataError, match=absent):
        check_sources(make_cfg("dataset=mbeir").dataset)
    splits = (f"dataset.splits={{train: [{{queries: {TRAIN[0]}, pool: {TRAIN[1]}}}], "
              f"test: [{{queries: {COCO_T2I[0]}, pool: {COCO_T2I[1]}, qrels: nope_qrels.txt}}]}}")
    with pytest.raises(DataError, match=r"M-BEIR/nope_qrels.txt: file not found \(dataset.splits.test\[0\].qrels;"):
        check_sources(make_cfg("dataset=mbeir", splits).dataset)
    with pytest.raises(DataError, match=r"M-BEIR/u.jsonl: file not found \(dataset.universal.test;"):
        check_sources(make_cfg("dataset=mbeir", splits.replace(", qrels: nope_qrels.txt", ""),
                               "+dataset.universal.test=u.jsonl").dataset)
    (data_root / "M-BEIR" / TSV).unlink()
    with pytest.raises(DataError, match=rf"M-BEIR/{TSV}: file not found \(dataset.instructions;"):
        check_sources(make_cfg("dataset=mbeir", splits.replace(", qrels: nope_qrels.txt", "")).dataset)
    check_sources(make_cfg("dataset=mbeir", splits.replace(", qrels: nope_qrels.txt", ""),
                           "dataset.instructions=null").dataset)  # complete: M-BEIR's own qrels are optional


def test_mbeir_malformed_splits_are_left_to_the_builder(make_cfg, data_root):
    Tree(data_root / "M-BEIR")
    cfg = make_cfg("dataset=mbeir", "dataset.splits.test=[]", "dataset.splits.train=[{queries: 3}]")
    check_sources(cfg.dataset)  # nothing to look for: build_mbeir says what is wrong (test_mbeir_bad_input.py)


def test_mbeir_absolute_names_need_no_root(make_cfg, data_root):
    tree = Tree(data_root / "elsewhere")
    splits = (f"dataset.splits={{train: [{{queries: {tree.root / TRAIN[0]}, pool: {tree.root / TRAIN[1]}, "
              f"qrels: ''}}], test: [{{queries: {tree.root / COCO_T2I[0]}, pool: {tree.root / COCO_T2I[1]}}}]}}")
    check_sources(make_cfg("dataset=mbeir", splits, "dataset.instructions=null").dataset)  # no data/M-BEIR root


def test_karpathy_and_precomputed_pass_when_present_and_name_the_kind(make_cfg, data_root):
    fx = KarpathyFixture(data_root / "flickr30k", "dataset_flickr30k.json", "flickr30k-images", FLICKR, coco=False)
    cfg = make_cfg("dataset=flickr30k", f"dataset.json_path={fx.json_path}", f"dataset.image_root={fx.json_path}")
    with pytest.raises(DataError, match=r"directory not found \(dataset.image_root; a file is there;"):
        check_sources(cfg.dataset)
    check_sources(make_cfg("dataset=flickr30k", f"dataset.json_path={fx.json_path}",
                           f"dataset.image_root={fx.image_root}").dataset)
    check_sources(make_cfg("dataset=flickr30k", f"dataset.json_path={fx.json_path}", "dataset.image_root=''").dataset)
    (data_root / "precomputed").mkdir()
    pre = PrecomputedFixture(data_root / "precomputed")
    check_sources(make_cfg("dataset=precomputed").dataset)
    (pre.root / "ids.txt").unlink()
    with pytest.raises(DataError, match=r"ids.txt: file not found \(dataset.ids;"):
        check_sources(make_cfg("dataset=precomputed").dataset)
    # .pt features hold their own ids: the ids file is not an input then
    check_sources(make_cfg("dataset=precomputed", f"dataset.features={pre.root / 'features.pt'}").dataset)


def test_generated_and_unknown_datasets_have_no_inputs(make_cfg):
    check_sources(make_cfg().dataset)  # shapes: generated
    check_sources(make_cfg("+dataset.extra=/nonexistent").dataset)
    check_sources(None)
