"""`dataset=flickr30k` / `dataset=coco`: the Karpathy-split adapter on tiny fixtures written in
exactly the Karpathy JSON format, with real PNG/JPEG files (genretr/data/karpathy.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from genretr.data.karpathy import build_karpathy
from genretr.data.schema import IMAGE, PAIR, TEXT
from genretr.data.images import ImageFiles, write_images
from genretr.errors import DataError

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset"
RED, BLUE, GREEN, SOLID = (220, 30, 30), (30, 40, 220), (30, 200, 40), (200, 30, 40)


def solid(colour, w=20, h=16):
    return Image.new("RGB", (w, h), colour)


def stripes(wide: bool):
    """Three bands blue | red | green along the long side: a centre crop keeps only red."""
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, :20], arr[:, 20:40], arr[:, 40:] = BLUE, RED, GREEN
    return Image.fromarray(arr if wide else arr.transpose(1, 0, 2).copy())


def captions(stem: str, n: int) -> list[str]:
    return [f"caption {j} of {stem}" for j in range(n)]


# (filename, folder or None, split, image, captions)
FLICKR = [
    ("t0.jpg", None, "train", solid(RED), captions("t0", 5)),
    ("t1.png", None, "train", stripes(wide=True), captions("t1", 3)),
    ("t2.jpg", None, "train", solid(GREEN, 30, 30), captions("t2", 5)),
    ("v0.png", None, "val", stripes(wide=False), captions("v0", 5)),
    ("s0.png", None, "test", solid(SOLID), ["  A red-ish square.  "] + captions("s0", 4)),
    ("s1.jpg", None, "test", solid(BLUE, 16, 24), captions("s1", 5)),
]
COCO = [  # Karpathy's COCO file lists val2014 (restval/val/test) first, then train2014
    ("COCO_val2014_000000000003.jpg", "val2014", "restval", solid(RED), captions("c3", 5)),
    ("COCO_val2014_000000000005.jpg", "val2014", "val", solid(GREEN), captions("c5", 5)),
    ("COCO_val2014_000000000004.jpg", "val2014", "restval", solid(BLUE), captions("c4", 6)),
    ("COCO_val2014_000000000006.jpg", "val2014", "test", solid(SOLID), captions("c6", 5)),
    ("COCO_val2014_000000000007.jpg", "val2014", "test", solid(RED), captions("c7", 7)),
    ("COCO_train2014_000000000001.jpg", "train2014", "train", solid(GREEN), captions("c1", 5)),
    ("COCO_train2014_000000000002.jpg", "train2014", "train", solid(BLUE), captions("c2", 5)),
]


class Fixture:
    """A Karpathy JSON plus its image files under tmp_path, laid out as the configs expect."""

    def __init__(self, root: Path, json_name: str, image_dir: str, spec: list, coco: bool):
        self.json_path, self.image_root = root / json_name, root / image_dir
        images, sentid = [], 0
        for k, (filename, folder, split, img, caps) in enumerate(spec):
            path = self.image_root / folder / filename if folder else self.image_root / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path)
            sentences = [{"tokens": c.split(), "raw": c, "imgid": k, "sentid": sentid + j} for j, c in enumerate(caps)]
            entry = {"sentids": list(range(sentid, sentid + len(caps))), "imgid": k, "sentences": sentences,
                     "split": split, "filename": filename}
            if coco:
                entry.update(filepath=folder, cocoid=int(filename[-8:-4]))
            images.append(entry)
            sentid += len(caps)
        self.data = {"images": images, "dataset": "coco" if coco else "flickr30k"}
        self.write()

    def write(self):
        self.json_path.write_text(json.dumps(self.data, indent=1))

    def file(self, k: int) -> Path:
        e = self.data["images"][k]
        return self.image_root / e.get("filepath", "") / e["filename"]

    def build(self, **kw):
        kw.setdefault("image_size", 8)
        return build_karpathy(self.data["dataset"], str(self.json_path), str(self.image_root), **kw)


@pytest.fixture
def flickr(tmp_path):
    return Fixture(tmp_path / "flickr30k", "dataset_flickr30k.json", "flickr30k-images", FLICKR, coco=False)


@pytest.fixture
def coco(tmp_path):
    return Fixture(tmp_path / "coco", "dataset_coco.json", ".", COCO, coco=True)


def check_structure(ds, expected: dict[str, list[int]]):
    """Counts of items, queries and pools from {split: [captions per image]}."""
    n_images = sum(len(v) for v in expected.values())
    n_caps = sum(sum(v) for v in expected.values())
    assert ds.images.shape == (n_images, 8, 8, 3) and ds.images.dtype == np.uint8
    assert len(ds.items) == 2 * n_images + n_caps
    assert sorted(ds.splits) == ["test", "train", "val"]
    for split, caps in expected.items():
        assert ds.tasks(split) == ["i2t", "t2i", "t2it"]
        assert len(ds.queries(split, "t2i")) == sum(caps)
        assert len(ds.queries(split, "i2t")) == len(caps)
        assert len(ds.queries(split, "t2it")) == sum(caps) - len(caps)
        assert len(ds.splits[split].queries) == 2 * sum(caps)
        pools = ds.splits[split].pools
        assert (len(pools["t2i"]), len(pools["i2t"]), len(pools["t2it"])) == (len(caps), sum(caps), len(caps))
        assert all(ds.items[i].modality == IMAGE for i in pools["t2i"])
        assert all(ds.items[i].modality == TEXT for i in pools["i2t"])
        assert all(ds.items[i].modality == PAIR for i in pools["t2it"])


def close(pixels, colour, tol=8):
    """Every pixel within `tol` of `colour` (JPEG is lossy)."""
    return np.abs(pixels.astype(int) - np.array(colour)).max() <= tol


def test_flickr_structure_ids_and_pixels(flickr):
    ds = flickr.build()
    assert ds.name == "flickr30k"
    check_structure(ds, {"train": [5, 3, 5], "val": [5], "test": [5, 5]})
    # ids, relevance and the image each query/item points at
    t0 = ds.items["train/t0.jpg"]
    assert ds.captions[t0.image] == [f"train/t0.jpg/cap{j}" for j in range(5)]
    q = next(q for q in ds.queries("train", "t2i") if q.id == "t2i/train/t0.jpg/cap1")
    assert q.relevant == ("train/t0.jpg",) and q.text == "caption 1 of t0" and q.instruction
    i2t = next(q for q in ds.queries("train", "i2t") if q.id == "i2t/train/t0.jpg")
    assert i2t.relevant == tuple(ds.captions[t0.image]) and i2t.image == t0.image
    t2it = [q for q in ds.queries("test", "t2it") if q.relevant == ("test/s0.png/pair",)]
    assert [q.text for q in t2it] == captions("s0", 4)
    pair = ds.items["test/s0.png/pair"]
    assert pair.text == "A red-ish square." and pair.image == ds.items["test/s0.png"].image  # stripped
    # pixels: lossless solid colour is exact, JPEG is close, centre crops keep the middle band
    assert (ds.images[pair.image] == SOLID).all()
    assert close(ds.images[t0.image].reshape(-1, 3), RED)
    wide, tall = ds.images[ds.items["train/t1.png"].image], ds.images[ds.items["val/v0.png"].image]
    assert close(wide.reshape(-1, 3), RED, tol=20) and close(tall.reshape(-1, 3), RED, tol=20)  # no squashing
    idx, texts = ds.training_pairs()
    assert len(texts) == 13 and close(ds.images[idx[texts.index("caption 0 of t2")]].reshape(-1, 3), GREEN)


def test_coco_filepath_and_restval_routing(coco):
    ds = coco.build()
    check_structure(ds, {"train": [5, 6, 5, 5], "val": [5], "test": [5, 7]})
    assert ds.splits["train"].pools["t2i"] == [
        "train/COCO_val2014_000000000003.jpg", "train/COCO_val2014_000000000004.jpg",
        "train/COCO_train2014_000000000001.jpg", "train/COCO_train2014_000000000002.jpg"]
    assert close(ds.images[ds.items["test/COCO_val2014_000000000006.jpg"].image].reshape(-1, 3), SOLID)

    dropped = coco.build(restval_to=None)
    check_structure(dropped, {"train": [5, 5], "val": [5], "test": [5, 7]})
    assert not any("000000000003" in i or "000000000004" in i for i in dropped.items)

    to_val = coco.build(restval_to="val")
    check_structure(to_val, {"train": [5, 5], "val": [5, 5, 6], "test": [5, 7]})


def test_max_images_per_split(coco):
    ds = coco.build(max_images_per_split=1)  # first per split in JSON order, after restval routing
    assert [ds.splits[s].pools["t2i"] for s in ("train", "val", "test")] == [
        ["train/COCO_val2014_000000000003.jpg"], ["val/COCO_val2014_000000000005.jpg"],
        ["test/COCO_val2014_000000000006.jpg"]]
    assert len(ds.images) == 3


@pytest.mark.parametrize("name, fixture_name", [("flickr30k", "flickr"), ("coco", "coco")])
def test_hydra_config_instantiates(name, fixture_name, request, tmp_path, monkeypatch):
    fx = request.getfixturevalue(fixture_name)
    monkeypatch.setenv("GENRETR_DATA", str(tmp_path))
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert cfg._target_ == "genretr.data.karpathy.build_karpathy" and cfg.restval_to == "train"
    ds = instantiate(cfg, image_size=8)
    assert ds.name == name and len(ds.images) == len(fx.data["images"])


def _set(k, key, value):
    def mutate(fx):
        fx.data["images"][k][key] = value
    return mutate


def _del(k, key):
    def mutate(fx):
        del fx.data["images"][k][key]
    return mutate


def _caption(k, j, text):
    def mutate(fx):
        fx.data["images"][k]["sentences"][j]["raw"] = text
    return mutate


def _no_test(fx):
    for e in fx.data["images"]:
        e["split"] = "train" if e["split"] == "test" else e["split"]


BAD = {  # name → (mutation of the data or of the files, text the message must contain)
    "missing json": (lambda fx: fx.json_path.unlink(), "file not found"),
    "malformed json": (lambda fx: fx.json_path.write_text('{"images": [\n  {"filename": "a.jpg",,}\n]}'),
                       "[line 2, column 24]: malformed JSON"),
    "no images key": (lambda fx: fx.json_path.write_text('{"dataset": "flickr30k"}'), "[images]"),
    "missing filename": (_del(1, "filename"), "[images[1]]"),
    "missing split": (_del(2, "split"), "[images[2] (filename=t2.jpg)]: missing 'split'"),
    "missing sentences": (_del(3, "sentences"), "[images[3] (filename=v0.png)]: missing 'sentences'"),
    "unknown split": (_set(0, "split", "dev"), "[images[0] (filename=t0.jpg)]: unknown split 'dev'"),
    "no sentences": (_set(5, "sentences", []), "[images[5] (filename=s1.jpg)]: image has no sentences"),
    "empty caption": (_caption(0, 2, ""), "[images[0] (filename=t0.jpg) sentences[2]]: empty"),
    "blank caption": (_caption(4, 0, " \t\n "), "[images[4] (filename=s0.png) sentences[0]]: empty"),
    "duplicate": (_set(2, "filename", "t0.jpg"), "[images[2] (filename=t0.jpg)]: duplicate"),
    "no test images": (_no_test, "no images in the test split"),
    "missing image": (lambda fx: fx.file(3).unlink(), "[images[3] (filename=v0.png)]: image file not found"),
    "corrupt image": (lambda fx: fx.file(5).write_bytes(b"not a jpeg at all"),
                      "[images[5] (filename=s1.jpg)]: cannot decode image"),
    "truncated image": (lambda fx: fx.file(0).write_bytes(fx.file(0).read_bytes()[:200]),
                        "[images[0] (filename=t0.jpg)]: cannot decode image"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_one_line_data_error(flickr, case):
    mutate, expected = BAD[case]
    mutate(flickr)
    if not case.endswith(("json", "key", "image")):
        flickr.write()
    with pytest.raises(DataError) as info:
        ds = flickr.build()
        write_images(ds.images, flickr.json_path.parent / "images.npy")  # decoding: the dataset stage's
    assert not (flickr.json_path.parent / "images.npy").exists() or not case.endswith("image")
    msg = str(info.value)
    assert msg.startswith(str(flickr.json_path)) and "dataset_flickr30k.json" in msg
    assert expected in msg and "\n" not in msg


def test_json_is_validated_before_any_image_is_decoded(flickr):
    flickr.file(0).write_bytes(b"garbage")  # would fail at decode time...
    _caption(5, 4, "   ")(flickr)  # ...but this later entry fails validation first
    flickr.write()
    with pytest.raises(DataError, match=r"images\[5\] \(filename=s1.jpg\) sentences\[4\]"):
        flickr.build()


def test_images_stay_files_until_the_dataset_stage_writes_them(flickr, tmp_path):
    """The builder lists the images (no pixels in memory); `write_images` decodes them a file at a time into one
    .npy, the same pixels as decoding them all at once."""
    ds = flickr.build()
    assert isinstance(ds.images, ImageFiles) and ds.images.shape == (len(ds.images), 8, 8, 3)
    write_images(ds.images, tmp_path / "images.npy")
    written = np.load(tmp_path / "images.npy", mmap_mode="r")
    assert written.dtype == np.uint8 and np.array_equal(written, np.asarray(ds.images))
    assert np.array_equal(ds.images[[2, 0]], written[[2, 0]]) and np.array_equal(ds.images[-1], written[-1])
