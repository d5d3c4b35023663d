"""The encode stage's artifact (genretr.data.embeddings): vectors saved as .npy and memory-mapped when loaded."""
from __future__ import annotations

import numpy as np
import torch

from genretr.data.embeddings import Embeddings, TowerParts


def test_saved_vectors_load_memory_mapped_and_equal(tmp_path):
    g = torch.Generator().manual_seed(0)
    emb = Embeddings(["a", "b", "c"], torch.randn(3, 4, generator=g), ["q1", "q2"], torch.randn(2, 4, generator=g))
    emb.save(tmp_path)
    again = Embeddings.load(tmp_path)
    assert isinstance(np.load(tmp_path / "item_vecs.npy", mmap_mode="r"), np.memmap)
    assert again.item_ids == emb.item_ids and again.query_ids == emb.query_ids
    assert torch.equal(again.items(["c", "a"]), emb.items(["c", "a"])) and torch.equal(again.queries(["q2"]),
                                                                                       emb.queries(["q2"]))
    again.item_vecs[0, 0] = 99.0  # copy-on-write: a stray write never reaches the artifact
    assert torch.equal(Embeddings.load(tmp_path).item_vecs, emb.item_vecs)
    assert torch.equal(again.items(["a"]), emb.items(["a"]))  # items() reads the file


def test_tower_parts_are_saved_and_loaded(tmp_path):
    parts = TowerParts([4, 2], torch.arange(6.0).view(2, 3), ["x y"], torch.ones(1, 3))
    Embeddings(["a"], torch.zeros(1, 3), ["q"], torch.zeros(1, 3), parts).save(tmp_path)
    again = Embeddings.load(tmp_path).parts
    assert again.images == [4, 2] and again.texts == ["x y"]
    assert again.lookup([(2, "x y")])[0].tolist() == [[3.0, 4.0, 5.0], [1.0, 1.0, 1.0]]
    assert again.lookup([(5, "x y"), (4, "z")]) == [None, None]
    (tmp_path / "none").mkdir()
    Embeddings(["a"], torch.zeros(1, 3), ["q"], torch.zeros(1, 3)).save(tmp_path / "none")
    assert Embeddings.load(tmp_path / "none").parts is None
