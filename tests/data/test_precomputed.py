"""`dataset=precomputed`: items as given feature vectors (CART's ImageBind audio/video features),
on fixtures generated here in the documented formats (genretr/data/precomputed.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from genretr.data.precomputed import build_precomputed
from genretr.data.schema import AUDIO, INSTRUCTIONS, TASK_TARGET, VIDEO
from genretr.errors import DataError, GenretrError

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset"
IDS = ["clip_a.wav", "clip_b.wav", "clip_c.wav", "clip_d.wav", "clip_e.wav"]
D = 6
# (item id, caption, split); clip_e has no caption and is left out
CAPTIONS = [("clip_a.wav", "a dog barks twice", "train"), ("clip_b.wav", "rain on a tin roof", "train"),
            ("clip_a.wav", "barking in a yard", "train"), ("clip_c.wav", "a train passes", "test"),
            ("clip_d.wav", "birds at dawn", "test"), ("clip_c.wav", "rumble of a locomotive", "test")]


class Fixture:
    def __init__(self, root: Path, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.root = root
        self.vecs = rng.normal(size=(len(IDS), D)).astype(np.float32) * 3  # not unit-norm on disk
        self.cap_vecs = rng.normal(size=(len(CAPTIONS), D)).astype(np.float32)
        self.ids, self.captions = list(IDS), [dict(item_id=i, caption=c, split=s) for i, c, s in CAPTIONS]
        self.write()

    def write(self):
        np.save(self.root / "features.npy", self.vecs)
        np.save(self.root / "caption_features.npy", self.cap_vecs)
        (self.root / "ids.txt").write_text("".join(i + "\n" for i in self.ids))
        (self.root / "captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in self.captions))
        torch.save({"item_ids": self.ids, "embeddings": torch.from_numpy(self.vecs)}, self.root / "features.pt")

    def build(self, pt=False, **kw):
        if pt:
            kw.update(features=self.root / "features.pt", ids=None)
        args = dict(features=self.root / "features.npy", ids=self.root / "ids.txt",
                    captions=self.root / "captions.jsonl", caption_features=self.root / "caption_features.npy")
        return build_precomputed(**{**args, **kw})


@pytest.fixture
def fx(tmp_path):
    return Fixture(tmp_path)


def unit(v):
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("pt", [False, True])
def test_items_queries_and_vectors(fx, pt):
    ds = fx.build(pt=pt)
    assert ds.tasks("train") == ["t2a"] == ds.tasks("test") and TASK_TARGET["t2a"] == AUDIO
    assert ds.splits["train"].pools["t2a"] == ["clip_a.wav", "clip_b.wav"]
    assert ds.splits["test"].pools["t2a"] == ["clip_c.wav", "clip_d.wav"]
    assert set(ds.items) == set(IDS[:4])  # clip_e: no caption
    for iid, it in ds.items.items():
        assert it.modality == AUDIO and it.image is None and it.text is None
        v = ds.item_vectors[iid]
        assert v.dtype == np.float32 and v.shape == (D,)
        np.testing.assert_allclose(v, unit(fx.vecs[IDS.index(iid)]), rtol=1e-6)
    queries = ds.queries("train", "t2a") + ds.queries("test", "t2a")
    assert [(q.text, q.relevant) for q in queries] == [(c, (i,)) for i, c, _ in CAPTIONS]
    assert [q.id for q in ds.queries("test", "t2a")] == ["t2a/clip_c.wav/cap0", "t2a/clip_d.wav/cap0",
                                                         "t2a/clip_c.wav/cap1"]
    assert all(q.instruction == INSTRUCTIONS["t2a"] and q.image is None for q in queries)
    for k, q in enumerate(queries):  # train captions are lines 1-3, test captions lines 4-6
        np.testing.assert_allclose(ds.query_vectors[q.id], unit(fx.cap_vecs[k]), rtol=1e-6)
    assert ds.images.shape[0] == 0 and "0 images, 4 items" in ds.summary()


def test_video_modality_raw_vectors_and_no_caption_features(fx):
    ds = fx.build(modality=VIDEO, normalize=False, caption_features=None)
    assert ds.tasks("test") == ["t2v"] and all(it.modality == VIDEO for it in ds.items.values())
    np.testing.assert_array_equal(ds.item_vectors["clip_b.wav"], fx.vecs[1])
    assert ds.query_vectors is None
    assert ds.queries("test", "t2v")[0].instruction == INSTRUCTIONS["t2v"]


def test_max_items_per_split(fx):
    ds = fx.build(max_items_per_split=1)
    assert ds.splits["train"].pools["t2a"] == ["clip_a.wav"] and ds.splits["test"].pools["t2a"] == ["clip_c.wav"]
    assert [q.text for q in ds.queries("test", "t2a")] == ["a train passes", "rumble of a locomotive"]
    assert set(ds.query_vectors) == {q.id for s in ds.splits.values() for q in s.queries}
    np.testing.assert_allclose(ds.query_vectors["t2a/clip_c.wav/cap1"], unit(fx.cap_vecs[5]), rtol=1e-6)


def test_hydra_config_instantiates(fx, monkeypatch):
    root = fx.root / "precomputed"
    root.mkdir()
    for f in ("features.npy", "ids.txt", "captions.jsonl"):
        (root / f).write_bytes((fx.root / f).read_bytes())
    monkeypatch.setenv("GENRETR_DATA", str(fx.root))
    ds = instantiate(OmegaConf.load(CONF / "precomputed.yaml"), _convert_="all")
    assert ds.tasks("test") == ["t2a"] and len(ds.item_vectors) == 4 and ds.query_vectors is None


# ------------------------------------------------------------------ bad input


def _bad(**change):
    def edit(fx):
        for k, v in change.items():
            setattr(fx, k, v(getattr(fx, k)) if callable(v) else v)
        fx.write()
    return edit


def _nan_row(m):
    m = m.copy()
    m[2, 3] = np.nan
    return m


BAD = {
    "ids vs rows": (_bad(ids=lambda ids: ids[:-1]), "ids.txt", None, "4 item ids but 5 rows"),
    "1-d features": (_bad(vecs=lambda m: m[:, 0]), "features.npy", "embeddings", "expected a non-empty (n, d)"),
    "duplicate id": (_bad(ids=lambda ids: ids[:2] + ids[:1] + ids[3:]), "ids.txt", "item 2 (clip_a.wav)",
                     "duplicate item id"),
    "nan vector": (_bad(vecs=_nan_row), "features.npy", "row 2 (item_id=clip_c.wav)", "NaN or infinite"),
    "zero vector": (_bad(vecs=lambda m: np.where(np.arange(len(m))[:, None] == 1, 0, m)), "features.npy",
                    "row 1 (item_id=clip_b.wav)", "zero vector"),
    "unknown item in captions": (_bad(captions=lambda c: c[:3] + [dict(c[3], item_id="nope.wav")] + c[4:]),
                                 "captions.jsonl", "line 4", "unknown item id 'nope.wav'"),
    "missing caption": (_bad(captions=lambda c: c[:1] + [{"item_id": "clip_b.wav", "split": "train"}] + c[2:]),
                        "captions.jsonl", "line 2", "'caption'"),
    "item in two splits": (_bad(captions=lambda c: c[:2] + [dict(c[2], split="test")] + c[3:]), "captions.jsonl",
                           "line 3", "in split 'test' here but 'train' at line 1"),
    "caption features rows": (_bad(cap_vecs=lambda m: m[:-1]), "caption_features.npy", None,
                              "does not match 6 captions"),
    "caption features dim": (_bad(cap_vecs=lambda m: m[:, :4]), "caption_features.npy", None,
                             "dimension 6"),
    "nan caption vector": (_bad(cap_vecs=_nan_row), "caption_features.npy", "row 2 (", "NaN or infinite"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_file_and_entry(fx, case):
    edit, file, entry, problem = BAD[case]
    edit(fx)
    with pytest.raises(DataError) as err:
        fx.build()
    msg = str(err.value)
    assert "\n" not in msg and err.value.path == str(fx.root / file), msg
    assert (err.value.entry is None if entry is None else entry in err.value.entry) and problem in msg, msg


def test_bad_pt_and_json(fx):
    torch.save({"embeddings": torch.zeros(2, 3)}, fx.root / "features.pt")
    with pytest.raises(DataError, match=r"features.pt: expected a dict with 'item_ids'"):
        fx.build(pt=True)
    torch.save({"item_ids": ["a", ""], "embeddings": torch.ones(2, 3)}, fx.root / "features.pt")
    with pytest.raises(DataError, match=r"features.pt \[item_ids\]: not a list of non-empty strings"):
        fx.build(pt=True)
    (fx.root / "captions.jsonl").write_text('{"item_id": "clip_a.wav", "caption": "x", "split": "train"}\n{oops\n')
    with pytest.raises(DataError, match=r"captions.jsonl \[line 2\]: malformed JSON"):
        fx.build()
    with pytest.raises(DataError, match=r"features.h5: unsupported features file '.h5'"):
        (fx.root / "features.h5").write_bytes(b"")
        fx.build(features=fx.root / "features.h5")
    with pytest.raises(DataError, match="missing.npy: file not found"):
        fx.build(features=fx.root / "missing.npy")


def test_a_caption_may_hold_any_unicode_line_separator(fx):
    fx.captions[1]["caption"] = "rain\u2028on a tin\x85roof"  # written unescaped: one line each all the same
    (fx.root / "captions.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in fx.captions),
                                            encoding="utf-8")
    texts = [q.text for q in fx.build().splits["train"].queries]
    assert "rain\u2028on a tin\x85roof" in texts and len(texts) == 3


def test_text_files_not_utf8_name_the_line(fx):
    ids = (fx.root / "ids.txt").read_bytes()
    (fx.root / "ids.txt").write_bytes(ids.replace(b"clip_b", b"clip_\xe9", 1))
    with pytest.raises(DataError, match=r"ids.txt \[line 2\]: not UTF-8 text \(byte 6 of the line is e9\)"):
        fx.build()
    fx.write()
    (fx.root / "captions.jsonl").write_bytes(b'{"item_id": "clip_a.wav", "caption": "caf\xe9", "split": "train"}\n')
    with pytest.raises(DataError, match=r"captions.jsonl \[line 1\]: not UTF-8 text"):
        fx.build()


@pytest.mark.parametrize("kw, problem", [
    ({"modality": "image"}, "dataset.modality"),
    ({"ids": None}, "dataset.ids is required"),
    ({"features": "features.pt"}, "dataset.ids is only for .npy"),
    ({"max_items_per_split": 0}, "max_items_per_split"),
])
def test_bad_config(fx, kw, problem):
    if "features" in kw:
        kw["features"] = fx.root / kw["features"]
    with pytest.raises(GenretrError, match=problem):
        fx.build(**kw)
