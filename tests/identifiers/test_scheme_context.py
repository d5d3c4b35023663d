"""genretr.stages.identify.scheme_context: what a scheme learns from besides the items -- the train pairs of
the run's tasks only (GENIUS's quantizer), row-aligned vectors, items, ids and sides; pair parts re-embedded."""
import numpy as np
import torch

from genretr.data.embeddings import Embeddings, TowerParts
from genretr.data.schema import Item, Query, RetrievalDataset, Split
from genretr.stages.context import DecoderSpace, RunContext
from genretr.stages.identify import scheme_context


def toy():
    items = {"i0": Item("i0", "image", image=0), "i1": Item("i1", "image", image=1),
             "p0": Item("p0", "image,text", image=1, text="a red square")}
    train = Split(queries=[Query("q0", "t2i", ("i0",), "find the image", text="a red circle"),
                           Query("q1", "it2i", ("i0", "i1"), "edit the image", image=1, text="make it round"),
                           Query("q2", "t2it", ("p0",), "find the pair", text="a red square")],
                  pools={"t2i": ["i0", "i1"]})
    ds = RetrievalDataset("toy", np.zeros((2, 4, 4, 3), np.uint8), items, {"train": train, "test": Split()})
    emb = Embeddings(["i0", "i1", "p0"], torch.eye(3), ["q0", "q1", "q2"], 10 + torch.arange(9.0).view(3, 3))
    return ds, emb


def test_pairs_of_the_runs_tasks_row_aligned(make_cfg, tmp_path, monkeypatch):
    ctx = RunContext(make_cfg("eval.tasks=[t2i,it2i]", "encoder.instructions=true"), tmp_path / "run")
    ctx.keys["encode"] = "encode-key"
    asked = []

    def embed_sides(self, ds, sides, names, parts=False):
        asked.append((list(sides), parts))
        return torch.tensor([[[float(image or 0)] * 3, [float(len(text or ""))] * 3] for image, text in sides])

    monkeypatch.setattr(RunContext, "embed_sides", embed_sides)
    ds, emb = toy()
    c = scheme_context(ctx, ds, emb, ["i0", "i1", "p0"], tmp_path / "work")
    # t2it (q2) is not among the run's tasks: its pair is left out; q1's two targets are two rows of one query
    assert c.train_query_ids == ["q0", "q1", "q1"]
    assert c.train_query_items == ["i0", "i0", "i1"]
    assert c.train_query_tasks == ["t2i", "it2i", "it2i"]
    assert np.array_equal(np.asarray(c.train_query_vecs), emb.queries(["q0", "q1", "q1"]).numpy())
    assert c.train_query_sides == [(None, "find the image a red circle"), (1, "edit the image make it round"),
                                   (1, "edit the image make it round")]
    assert c.item_modalities == ["image", "image", "image,text"]
    assert asked == []  # nothing is embedded until a scheme asks
    parts = c.pair_parts([(1, "abc")])
    assert asked == [([(1, "abc")], True)] and parts.shape == (1, 2, 3) and parts[0, 1, 0] == 3
    emb.parts = TowerParts([1], torch.ones(1, 3), ["edit the image make it round"], torch.zeros(1, 3))
    asked.clear()  # the towers' vectors the encode stage kept are read, not embedded again
    assert c.pair_parts([c.train_query_sides[1]]).tolist() == [[[1.0] * 3, [0.0] * 3]] and asked == []
    # the decoder's space (GENIUS Eq. 9) sees a query with the sides the quantizer learned it with, and its parts
    seen = []

    def fused(vecs, sides, pair_parts):
        seen.append(sides)
        return torch.from_numpy(pair_parts([s for s in sides if None not in s]).sum(1))

    space = DecoderSpace(fused, ctx, ds, emb)
    assert space.queries([ds.splits["train"].queries[k] for k in (0, 1)], emb.queries(["q0", "q1"])).tolist() == [
        [1.0] * 3]  # q1's parts, as kept
    space.items(["i0", "p0"], emb.items(["i0", "p0"]))
    assert seen == [c.train_query_sides[:2], [(True, None), (1, "a red square")]]
    assert asked == [([(1, "a red square")], True)]  # p0's parts were not kept: embedded


def test_pair_parts_read_what_the_encode_stage_kept(make_cfg, tmp_path, monkeypatch):
    """The towers' vectors of the sides the encode stage fused are read, not embedded again; others are."""
    ctx = RunContext(make_cfg(), tmp_path / "run")
    asked = []

    def embed_sides(self, ds, sides, names, parts=False):
        asked.append(list(sides))
        return torch.full((len(sides), 2, 3), 7.0)

    monkeypatch.setattr(RunContext, "embed_sides", embed_sides)
    ds, emb = toy()
    emb.parts = TowerParts([1], torch.ones(1, 3), ["a red square"], 2 * torch.ones(1, 3))
    got = ctx.pair_parts(ds, emb, [(1, "a red square"), (0, "a red square"), (1, "new text")])
    assert asked == [[(0, "a red square"), (1, "new text")]]
    assert got[0].tolist() == [[1.0] * 3, [2.0] * 3] and (got[1:] == 7).all()
