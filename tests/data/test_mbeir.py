"""`dataset=mbeir`: the M-BEIR adapter on a tiny tree written in M-BEIR's own layout and format
(query jsonl, pool jsonl, instructions TSV, images under the root) — genretr/data/mbeir.py."""
from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from genretr.data.mbeir import build_mbeir
from genretr.data.schema import IMAGE, INSTRUCTIONS, PAIR, TASK_TARGET, TEXT, UNIVERSAL
from genretr.errors import DataError

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset"
RED, GREEN, BLUE, GRAY = (220, 30, 30), (30, 200, 40), (30, 40, 220), (128, 128, 128)
COCO_T2I = ("query/test/mbeir_mscoco_task0_test.jsonl", "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl")
COCO_I2T = ("query/test/mbeir_mscoco_task3_test.jsonl", "cand_pool/local/mbeir_mscoco_task3_test_cand_pool.jsonl")
WEBQA = ("query/test/mbeir_webqa_task2_test.jsonl", "cand_pool/local/mbeir_webqa_task2_cand_pool.jsonl")
OVEN = ("query/test/mbeir_oven_task6_test.jsonl", "cand_pool/local/mbeir_oven_task6_cand_pool.jsonl")
TRAIN = ("query/train/mbeir_mscoco_train.jsonl", "cand_pool/local/mbeir_mscoco_train_cand_pool.jsonl")
UNION = "cand_pool/global/mbeir_union_test_cand_pool.jsonl"
UNION_TRAIN = ("query/union_train/mbeir_union_up_train.jsonl", "cand_pool/global/mbeir_union_train_cand_pool.jsonl")
TSV = "instructions/query_instructions.tsv"


def cand(did, modality, txt=None, img=None):
    return {"did": did, "txt": txt, "img_path": img, "modality": modality, "src_content": None}


def query(qid, modality, task_id, pos, txt=None, img=None):
    return {"qid": qid, "query_txt": txt, "query_img_path": img, "query_modality": modality,
            "query_src_content": None, "pos_cand_list": pos, "neg_cand_list": [], "task_id": task_id}


IMAGES = {"mbeir_images/mscoco_images/a.jpg": RED, "mbeir_images/mscoco_images/b.jpg": GREEN,
          "mbeir_images/mscoco_images/c.png": BLUE, "mbeir_images/oven_images/q.jpg": GRAY,
          "mbeir_images/mscoco_images/train0.jpg": GREEN}
A, B, C, Q = (f"mbeir_images/{p}" for p in ("mscoco_images/a.jpg", "mscoco_images/b.jpg", "mscoco_images/c.png",
                                              "oven_images/q.jpg"))


def files() -> dict[str, list]:
    """Every jsonl of the fixture tree: path → entries."""
    pools = {
        COCO_T2I[1]: [cand("9:1", "image", img=A), cand("9:2", "image", img=B), cand("9:3", "image", img=C)],
        COCO_I2T[1]: [cand("9:11", "text", "A red square."), cand("9:12", "text", "A green field."),
                      cand("9:13", "text", "Blue sky.")],
        WEBQA[1]: [cand("2:1", "image,text", "Red headline", A), cand("2:2", "text,image", "Blue headline", C)],
        OVEN[1]: [cand("5:7", "text", "Gray cat (animal)."), cand("5:8", "text", "Tabby.")],
        TRAIN[1]: [cand("9:101", "image", img="mbeir_images/mscoco_images/train0.jpg"),
                   cand("9:102", "text", "A green train picture.")],
    }
    union = [dict(c) for path in (COCO_T2I[1], COCO_I2T[1], WEBQA[1], OVEN[1]) for c in pools[path]]
    queries = {
        COCO_T2I[0]: [query("9:1", "text", 0, ["9:1"], "a red picture"), query("9:2", "text", 0, ["9:2"], "green")],
        COCO_I2T[0]: [query("9:3", "image", 3, ["9:11"], img=A), query("9:4", "image", 3, ["9:13"], img=C)],
        WEBQA[0]: [query("2:5", "text", 2, ["2:2"], "what is blue?")],
        # OVEN lists an InfoSeek (dataset 6) positive too: UniIR's evaluation keeps the query's own dataset
        OVEN[0]: [query("5:1", "image,text", 6, ["5:7", "6:9"], "what animal is this?", Q)],
        TRAIN[0]: [query("9:201", "text", 0, ["9:101"], "a green picture"),
                   query("9:202", "image", 3, ["9:102"], img="mbeir_images/mscoco_images/train0.jpg")],
    }
    return {**pools, UNION: union, **queries}


INSTRUCTION_ROWS = [
    ["query_modality", "cand_modality", "dataset", "dataset_id", "prompt_1", "prompt_2", "prompt_3"],
    ["text", "image", "MSCOCO", "9", "Find me an everyday image that matches the given caption.",
     "Identify the image showcasing the described everyday scene.", ""],
    ["image", "text", "MSCOCO", "9", "Find an image caption describing the following everyday image.", "", ""],
    ["text", "image,text", "WebQA", "2", "Find a Wikipedia image that answers this question.", "", ""],
    ["image,text", "text", "OVEN", "5", "Retrieve a Wikipedia paragraph that provides an answer to the given "
                                        "query about the image.", "", ""],
]


def qrels_file(queries: str) -> str:
    """M-BEIR's qrels file of a query file: query/test/mbeir_x_test.jsonl → qrels/test/mbeir_x_test_qrels.txt."""
    return "qrels/" + queries[len("query/"):-len(".jsonl")] + "_qrels.txt"


def qrels_lines(entries: list[dict]) -> list[str]:
    """UniIR's qrels of query entries (mbeir_data_generator.py --generate_qrels): `qid 0 did 1 task_id` per positive."""
    return [f"{q['qid']} 0 {did} 1 {q['task_id']}" for q in entries for did in q["pos_cand_list"]]


class Tree:
    """An M-BEIR root under tmp_path; `entries`, `qrels` (path → lines) and `tsv` can be edited, then `write()`."""

    def __init__(self, root: Path):
        self.root, self.entries, self.tsv = root, files(), [list(r) for r in INSTRUCTION_ROWS]
        self.qrels: dict[str, list[str]] = {}
        for rel, colour in IMAGES.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (24, 18), colour).save(root / rel)
        self.write()

    def write(self):
        for rel, rows in self.entries.items():
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.root / rel).write_text("".join(json.dumps(r) + "\n" for r in rows))
        for rel, lines in self.qrels.items():
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.root / rel).write_text("".join(line + "\n" for line in lines))
        (self.root / TSV).parent.mkdir(parents=True, exist_ok=True)
        (self.root / TSV).write_text("".join("\t".join(r) + "\n" for r in self.tsv))

    def build(self, test=(COCO_T2I, COCO_I2T, WEBQA, OVEN), universal=True, train=(TRAIN,), **kw):
        """Sources are (queries, pool) or (queries, pool, qrels) tuples."""
        def sources(files):
            return [{"queries": f[0], "pool": f[1], **({"qrels": f[2]} if len(f) > 2 else {})} for f in files]
        splits = {"train": sources(train), "test": sources(test)}
        kw.setdefault("instructions", TSV)
        return build_mbeir(self.root, splits, universal={"test": UNION} if universal else None, image_size=8, **kw)


@pytest.fixture
def tree(tmp_path):
    return Tree(tmp_path / "M-BEIR")


@pytest.fixture
def ds(tree):
    return tree.build()


def colour_of(ds, index):
    """The (solid) image's colour, to the nearest of the fixture's colours (JPEG shifts it slightly)."""
    mean = ds.images[index].reshape(-1, 3).mean(0)
    return min((RED, GREEN, BLUE, GRAY), key=lambda c: np.abs(mean - c).sum())


# ------------------------------------------------------------------ structure


def test_tasks_pools_and_items(ds):
    test = ds.splits["test"]
    assert ds.tasks("test") == ["i2t", "it2t", "t2i", "t2it"] and ds.tasks("train") == ["i2t", "t2i"]
    assert test.pools["t2i"] == ["9:1", "9:2", "9:3"]
    assert test.pools["i2t"] == ["9:11", "9:12", "9:13"]
    assert test.pools["t2it"] == ["2:1", "2:2"] and test.pools["it2t"] == ["5:7", "5:8"]
    for task in ds.tasks("test"):
        assert all(ds.items[i].modality == TASK_TARGET[task] for i in test.pools[task])
    assert ds.items["9:11"].text == "A red square." and ds.items["9:11"].image is None
    assert ds.items["9:1"].text is None and colour_of(ds, ds.items["9:1"].image) == RED
    pair = ds.items["2:2"]  # "text,image" is read as a pair too
    assert pair.modality == PAIR and pair.text == "Blue headline" and colour_of(ds, pair.image) == BLUE
    assert ds.items["2:1"].image == ds.items["9:1"].image  # one image file, decoded once
    assert ds.images.dtype == np.uint8 and ds.images.shape == (len(IMAGES), 8, 8, 3)
    assert ds.item_vectors is None and ds.query_vectors is None


def test_queries_relevance_and_content(ds):
    t2i = ds.queries("test", "t2i")
    assert [(q.id, q.relevant, q.text, q.image) for q in t2i] == [
        ("test/t2i/9:1", ("9:1",), "a red picture", None), ("test/t2i/9:2", ("9:2",), "green", None)]
    i2t = ds.queries("test", "i2t")
    assert [q.relevant for q in i2t] == [("9:11",), ("9:13",)] and all(q.text is None for q in i2t)
    assert [colour_of(ds, q.image) for q in i2t] == [RED, BLUE]
    (oven,) = ds.queries("test", "it2t")
    assert oven.relevant == ("5:7",)  # the InfoSeek positive is not the query's dataset
    assert oven.text == "what animal is this?" and colour_of(ds, oven.image) == GRAY
    train = ds.splits["train"]
    assert [q.task for q in train.queries] == ["t2i", "i2t"]
    # a mixed pool file: each task's pool holds its target modality only
    assert train.pools == {"t2i": ["9:101"], "i2t": ["9:102"]}
    idx, texts = ds.training_pairs()
    assert texts == ["a green picture"] and idx.tolist() == [ds.items["9:101"].image]


def test_instructions_come_from_the_tsv_deterministically(tree, ds):
    coco = [p for p in INSTRUCTION_ROWS[1][4:] if p]
    for q in ds.queries("test", "t2i"):
        qid = q.id.split("/")[-1]
        assert q.instruction == coco[zlib.crc32(qid.encode()) % len(coco)]
    assert ds.queries("test", "i2t")[0].instruction == INSTRUCTION_ROWS[2][4]
    assert ds.queries("test", "it2t")[0].instruction.startswith("Retrieve a Wikipedia paragraph")
    again = tree.build()
    assert again.splits == ds.splits and np.array_equal(again.images, ds.images)
    plain = tree.build(instructions=None)
    assert all(q.instruction == INSTRUCTIONS[q.task] for s in plain.splits.values() for q in s.queries)


def test_universal_pool(ds, tree):
    union = ds.splits["test"].pools[UNIVERSAL]
    assert union == [c["did"] for c in files()[UNION]]
    assert {ds.items[i].modality for i in union} == {IMAGE, TEXT, PAIR}
    assert UNIVERSAL not in ds.tasks("test") and UNIVERSAL not in ds.splits["train"].pools
    assert all(set(q.relevant) <= set(union) for q in ds.splits["test"].queries)
    assert UNIVERSAL not in tree.build(universal=False).splits["test"].pools


def test_sources_sharing_a_task_share_one_pool(tree):
    extra = ("query/test/mbeir_mscoco_task0_extra.jsonl", "cand_pool/local/extra_pool.jsonl")
    tree.entries[extra[1]] = [cand("9:50", "image", img=C), cand("9:1", "image", img=A)]
    tree.entries[extra[0]] = [query("9:60", "text", 0, ["9:50"], "blue")]
    tree.write()
    ds = tree.build(test=(COCO_T2I, extra), universal=False)
    assert ds.splits["test"].pools["t2i"] == ["9:1", "9:2", "9:3", "9:50"]
    assert [q.id for q in ds.queries("test", "t2i")] == ["test/t2i/9:1", "test/t2i/9:2", "test/t2i/9:60"]


def test_quick_run_limits_keep_every_positive(tree):
    ds = tree.build(max_queries_per_file=1, max_pool_size=1)
    test = ds.splits["test"]
    assert [q.id for q in ds.queries("test", "i2t")] == ["test/i2t/9:3"]
    assert test.pools["i2t"] == ["9:11"]  # first candidate, which is also the kept query's positive
    assert test.pools["t2i"] == ["9:1"] and test.pools["t2it"] == ["2:1", "2:2"]  # 2:2 kept: a positive
    assert test.pools[UNIVERSAL] == ["9:1", "9:11", "2:2", "5:7"]
    assert set(ds.items) == {i for s in ds.splits.values() for p in s.pools.values() for i in p}


def test_hydra_config_instantiates(tree, monkeypatch):
    monkeypatch.setenv("GENRETR_DATA", str(tree.root.parent))
    cfg = OmegaConf.load(CONF / "mbeir.yaml")
    ds = instantiate(cfg, image_size=8, _convert_="all")
    assert ds.name == "mbeir_mscoco" and ds.tasks("test") == ["i2t", "t2i"] and ds.tasks("train") == ["i2t", "t2i"]
    assert len(ds.queries("test", "t2i")) == 2 and UNIVERSAL not in ds.splits["test"].pools


# ------------------------------------------------------------------ UniIR's union train file; train keeps all positives


def union_train(tree, order=(0, 1, 2, 0, 0, 2, 1)):
    """UniIR's mbeir_union_up_train.jsonl: the train queries (and an OVEN one with an InfoSeek positive), upsampled by
    repeating identical entries, shuffled; and mbeir_union_train_cand_pool.jsonl."""
    oven = query("5:301", "image,text", 6, ["5:17", "6:19"], "what animal is this?", Q)
    base = [*tree.entries[TRAIN[0]], oven]
    tree.entries[UNION_TRAIN[0]] = [dict(base[k]) for k in order]
    tree.entries[UNION_TRAIN[1]] = [*tree.entries[TRAIN[1]], cand("5:17", "text", "Gray cat (animal)."),
                                    cand("6:19", "text", "The cat is a small domesticated carnivore.")]
    tree.write()


def test_union_train_file_collapses_upsampled_repeats(tree, caplog):
    union_train(tree)
    with caplog.at_level(logging.INFO, logger="genretr.data.mbeir"):
        ds = tree.build(train=(UNION_TRAIN,))
    train = ds.splits["train"]
    assert [q.id for q in train.queries] == ["train/t2i/9:201", "train/i2t/9:202", "train/it2t/5:301"]
    assert "mbeir train: 4 repeated entries (UniIR's upsampling) collapsed into their first; 3 queries" in caplog.text
    assert train.pools["t2i"] == ["9:101"] and train.pools["it2t"] == ["9:102", "5:17", "6:19"]
    idx, texts = ds.training_pairs()
    assert texts == ["a green picture"] and idx.tolist() == [ds.items["9:101"].image]


@pytest.mark.parametrize("line, qid, field, value", [
    (4, "9:201", "query_txt", "a blue picture"),  # line 4 repeats 9:201 of line 1
    (4, "9:201", "pos_cand_list", ["9:101", "9:7"]),
    (7, "9:202", "query_img_path", B),  # line 7 repeats 9:202 (i2t) of line 2
])
def test_conflicting_repeat_in_the_union_train_file(tree, line, qid, field, value):
    union_train(tree)
    tree.entries[UNION_TRAIN[0]][line - 1][field] = value
    tree.write()
    with pytest.raises(DataError) as err:
        tree.build(train=(UNION_TRAIN,))
    msg, first = str(err.value), {"9:201": "line 1", "9:202": "line 2"}[qid]
    task = {"9:201": "t2i", "9:202": "i2t"}[qid]
    assert "\n" not in msg and err.value.path == str(tree.root / UNION_TRAIN[0]), msg
    assert msg.endswith(f"[line {line} (qid={qid})]: duplicate qid '{qid}' for {task} conflicts with "
                        f"{tree.root / UNION_TRAIN[0]} [{first} (qid={qid})]: its {field} differs"), msg


def test_identical_repeat_outside_the_train_split_is_an_error(tree):
    tree.entries[COCO_T2I[0]].append(dict(tree.entries[COCO_T2I[0]][0]))
    tree.write()
    with pytest.raises(DataError, match=r"task0_test.jsonl \[line 3 \(qid=9:1\)\]: duplicate qid '9:1' for t2i "
                                        r"\(also .*\[line 1 \(qid=9:1\)\]; only the train split collapses"):
        tree.build()


def test_same_dataset_filter_applies_to_evaluation_not_training(tree):
    union_train(tree)
    ds = tree.build(train=(UNION_TRAIN,))
    # UniIR's MBEIRMainDataset trains on every positive of a query (its same-dataset filter is eval mode only) ...
    assert ds.queries("train", "it2t")[0].relevant == ("5:17", "6:19")
    # ... and evaluates on those of the query's own dataset: the test query lists ["5:7", "6:9"]
    assert ds.queries("test", "it2t")[0].relevant == ("5:7",)
    for entry in tree.entries[UNION_TRAIN[0]]:
        if entry["qid"] == "5:301":
            entry["pos_cand_list"] = ["6:19"]  # only another dataset's positive: trained on, never evaluated
    tree.write()
    assert tree.build(train=(UNION_TRAIN,)).queries("train", "it2t")[0].relevant == ("6:19",)
    tree.entries[OVEN[0]][0]["pos_cand_list"] = ["6:9"]
    tree.write()
    with pytest.raises(DataError, match=r"oven_task6_test.jsonl \[line 1 \(qid=5:1\)\]: no positive candidate from "
                                        r"the query's dataset '5'"):
        tree.build(train=(UNION_TRAIN,))
