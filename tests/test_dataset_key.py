"""The dataset stage is keyed by its source files' content (issue 14: after a Karpathy JSON was edited,
the rerun reused the stale dataset): text files by size and hash, image dirs by list and sizes."""
from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image

from genretr.fingerprint import source_fingerprint
from genretr.pipeline import Pipeline

COLOURS = [(220, 30, 30), (30, 40, 220), (30, 200, 40), (200, 200, 40), (90, 30, 120), (20, 20, 20)]


def write_karpathy(root: Path, splits: list[str], caption: str = "a {colour} square number {k}") -> Path:
    """A Karpathy JSON (dataset_flickr30k.json) with one solid PNG per entry under root/images."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for k, split in enumerate(splits):
        colour = COLOURS[k % len(COLOURS)]
        Image.new("RGB", (16, 16), colour).save(root / "images" / f"im{k}.png")
        caps = [caption.format(colour=colour, k=k) + f" view {j}" for j in range(2)]
        entries.append({"filename": f"im{k}.png", "split": split, "imgid": k,
                        "sentences": [{"raw": c, "tokens": c.split()} for c in caps]})
    path = root / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": entries}))
    return path


def build(make_cfg, data: Path, run: str):
    cfg = make_cfg("dataset=flickr30k", f"dataset.json_path={data / 'dataset_flickr30k.json'}",
                   f"dataset.image_root={data / 'images'}", run=run)
    p = Pipeline(cfg, data.parent / run)
    return p, p.dataset()


def captions(ds) -> list[str]:
    return sorted(q.text for s in ds.splits.values() for q in s.queries if q.task == "t2i")


def test_edited_karpathy_json_rebuilds_the_dataset(make_cfg, tmp_path):
    data = tmp_path / "flickr"
    json_path = write_karpathy(data, ["train"] * 4 + ["val", "test", "test", "test"])
    first, ds = build(make_cfg, data, "one")
    assert len(ds.images) == 8
    again, _ = build(make_cfg, data, "two")
    assert again.keys["dataset"] == first.keys["dataset"]  # nothing changed: reused

    # the edit: images dropped, every caption changed
    write_karpathy(data, ["train"] * 3 + ["test"] * 3, caption="the {colour} tile {k}")
    edited, ds = build(make_cfg, data, "three")
    assert edited.keys["dataset"] != first.keys["dataset"]
    assert len(ds.images) == 6 and all(c.startswith("the ") for c in captions(ds))

    # an edit that keeps the size and the mtime is seen by the hash
    stat = json_path.stat()
    text = json_path.read_text()
    json_path.write_text(text.replace("tile 0 view 0", "tile 0 view 9"))
    os.utime(json_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert json_path.stat().st_size == stat.st_size
    same_size, ds = build(make_cfg, data, "four")
    assert same_size.keys["dataset"] != edited.keys["dataset"]
    assert "the (220, 30, 30) tile 0 view 9" in captions(ds)


def test_image_dir_is_keyed_by_its_file_list_and_sizes(tmp_path):
    data = tmp_path / "flickr"
    write_karpathy(data, ["train", "test"])
    cfg = {"_target_": "genretr.data.karpathy.build_karpathy", "name": "flickr30k",
           "json_path": str(data / "dataset_flickr30k.json"), "image_root": str(data / "images")}
    before = source_fingerprint(cfg)
    assert set(before) == {"json_path", "image_root"} and before["image_root"]["files"] == 2
    assert "sha1" in before["json_path"] and "sha1" not in before["image_root"]

    image = data / "images" / "im0.png"
    stat = image.stat()
    image.write_bytes(image.read_bytes()[::-1])  # other bytes, the same size: the listing does not read them
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source_fingerprint(cfg) == before
    Image.new("RGB", (32, 32), (1, 2, 3)).save(image)  # another size
    resized = source_fingerprint(cfg)
    assert resized["image_root"] != before["image_root"] and resized["json_path"] == before["json_path"]
    (data / "images" / "extra.png").write_bytes(image.read_bytes())  # another file
    assert source_fingerprint(cfg)["image_root"]["files"] == 3
    (data / "images" / "loop").symlink_to(data / "images", target_is_directory=True)  # a link back: listed once
    assert source_fingerprint(cfg)["image_root"]["files"] == 3


def test_sources_under_a_root_and_generated_datasets(tmp_path):
    """M-BEIR names its files relative to `root`; a generated dataset (shapes) has no source files."""
    root = tmp_path / "M-BEIR"
    (root / "query" / "train").mkdir(parents=True)
    (root / "query" / "train" / "q.jsonl").write_text('{"qid": "9:1"}\n')
    (root / "instructions.tsv").write_text("a\tb\n")
    cfg = {"_target_": "genretr.data.mbeir.build_mbeir", "root": str(root), "instructions": "instructions.tsv",
           "splits": {"train": [{"queries": "query/train/q.jsonl", "pool": "cand_pool/missing.jsonl"}]},
           "name": "mbeir_mscoco"}
    found = source_fingerprint(cfg)
    assert set(found) == {"instructions", "splits.train[0].queries"}  # the root is not listed: it is huge
    (root / "mbeir_images").mkdir()
    (root / "mbeir_images" / "unrelated.jpg").write_bytes(b"x")  # a file no config entry names
    os.utime(root / "instructions.tsv", ns=(1, 1))  # touched, the same bytes
    assert source_fingerprint(cfg) == found
    (root / "query" / "train" / "q.jsonl").write_text('{"qid": "9:2"}\n')
    assert source_fingerprint(cfg)["splits.train[0].queries"] != found["splits.train[0].queries"]
    assert source_fingerprint({"_target_": "genretr.data.shapes.build_shapes", "seed": 0,
                               "splits": {"train": 60}, "tasks": ["t2i"]}) == {}
