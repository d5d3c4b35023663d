"""genretr.samples and the phased schedule of IdentifierDataModule (GRACE Sec. 3.4-3.5, Appendix A)."""
import lightning as L
import numpy as np
import pytest
import torch

from genretr.data.datamodules import EpochShuffle, IdentifierDataModule
from genretr.data.schema import Item, Query, RetrievalDataset, Split
from genretr.data.vocab import WordVocab
from genretr.identifiers.base import IdTable
from genretr.data.embeddings import Embeddings
from genretr.samples import MEMORIZE, RETRIEVE, PseudoQueries, decoder_samples


@pytest.fixture
def toy():
    items = {f"i{k}": Item(f"i{k}", "image", image=k) for k in range(4)}
    train = Split(queries=[Query("q0", "t2i", ("i0",), text="a red circle"),
                           Query("q1", "t2i", ("i1",), text="a blue square"),
                           Query("q2", "i2t", ("i1",), image=1)],
                  pools={"t2i": ["i0", "i1"]})
    test = Split(queries=[Query("q3", "t2i", ("i2",), text="green circle")], pools={"t2i": ["i2", "i3"]})
    ds = RetrievalDataset("toy", np.zeros((4, 2, 2, 3), np.uint8), items, {"train": train, "test": test})
    emb = Embeddings([f"i{k}" for k in range(4)], torch.eye(4)[:, :3].contiguous() + 0.1,
                     ["q0", "q1", "q2", "q3"], -torch.ones(4, 3))
    table = IdTable.from_lists([f"i{k}" for k in range(4)], [[2], [3], [4, 2], [4, 3]],
                               ["<pad>", "</s>", "a", "b", "c"])
    return ds, emb, table


def test_memorize_and_retrieve(toy):
    ds, emb, table = toy
    s = decoder_samples(ds, emb, table, ["t2i"], memorize_repeat=2)
    assert (s["phase"] == MEMORIZE).sum() == 8 and (s["phase"] == RETRIEVE).sum() == 2
    mem = s["phase"] == MEMORIZE
    assert torch.equal(s["z"][mem], s["target_z"][mem])  # memorize: the item's own vector
    assert torch.equal(s["labels"][-1], torch.tensor([3, 1, 0]))  # q1 -> i1
    assert torch.equal(s["z"][-1], emb.queries(["q1"])[0])


def test_switches_and_pseudo_queries(toy):
    ds, emb, table = toy
    s = decoder_samples(ds, emb, table, ["t2i"], memorize=False)
    assert (s["phase"] == RETRIEVE).all() and len(s["phase"]) == 2
    pseudo = PseudoQueries(["a green circle", "unknown item"], torch.zeros(2, 3), ["i2", "nope"])
    s = decoder_samples(ds, emb, table, ["t2i"], memorize=False, pseudo=pseudo, vocab=WordVocab.build(["a green"]))
    assert len(s["labels"]) == 3 and torch.equal(s["labels"][-1], torch.tensor([4, 2, 1]))
    assert s["src"].shape == (3, 32) and s["src"][-1, :2].tolist() == [2, 3]  # "a", "green"; "circle" -> <unk>
    with pytest.raises(ValueError, match="no decoder training samples"):
        decoder_samples(ds, emb, table, ["t2i"], memorize=False, retrieve=False)


def test_every_input_and_target_in_the_decoder_space(toy):
    """GENIUS Eq. 9 / 11: with a decoder space, memorize, retrieve and pseudo-query inputs and every target are
    mapped (items by id, queries with their sides, pseudo-queries as texts), each item and query once."""
    ds, emb, table = toy
    calls = []

    class Shift:  # a space that adds 10 to items, 20 to queries, 30 to texts
        def items(self, ids, vecs):
            calls.append(("items", list(ids)))
            return vecs + 10

        def queries(self, queries, vecs):
            calls.append(("queries", [q.id for q in queries]))
            return vecs + 20

        def texts(self, vecs):
            calls.append(("texts", len(vecs)))
            return vecs + 30

    pseudo = PseudoQueries(["a green circle"], torch.zeros(1, 3), ["i2"])
    s = decoder_samples(ds, emb, table, ["t2i"], memorize_repeat=2, pseudo=pseudo, space=Shift())
    assert calls == [("items", ["i0", "i1", "i2", "i3"]), ("queries", ["q0", "q1"]), ("texts", 1)]
    mem = s["phase"] == MEMORIZE
    assert torch.equal(s["z"][mem], emb.items(["i0", "i1", "i2", "i3"]).repeat(2, 1) + 10)
    assert torch.equal(s["target_z"], emb.items(["i0", "i1", "i2", "i3"] * 2 + ["i0", "i1", "i2"]) + 10)
    assert torch.equal(s["z"][~mem], torch.cat([emb.queries(["q0", "q1"]) + 20, torch.full((1, 3), 30.0)]))
    calls.clear()  # without memorizing, only the targets are mapped
    s = decoder_samples(ds, emb, table, ["t2i"], memorize=False, pseudo=pseudo, space=Shift())
    assert calls[0] == ("items", ["i0", "i1", "i2"])
    assert torch.equal(s["target_z"], emb.items(["i0", "i1", "i2"]) + 10)


def test_classifier_labels_keep_the_item_token_only(toy):
    ds, emb, table = toy
    s = decoder_samples(ds, emb, table, ["t2i"], labels_width=1)
    assert s["labels"].shape[1] == 1


def test_phased_schedule_draws_memorize_samples_first(toy):
    ds, emb, table = toy
    s = decoder_samples(ds, emb, table, ["t2i"], memorize_repeat=1)
    dm = IdentifierDataModule(s, batch_size=3, seed=0, schedule="phased", memorize_epochs=2)
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, EpochShuffle)
    for epoch, expect in [(0, 4), (1, 4), (2, 6)]:
        sampler.set_epoch(epoch)
        rows = list(sampler)
        assert len(rows) == len(sampler) == expect
        if epoch < 2:
            assert set(rows) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="schedule"):
        IdentifierDataModule(s, schedule="alternating")


def test_phased_schedule_of_mllm_samples(toy):
    """The MLLM path's sample lists follow train.schedule=phased too: only memorize samples (an item's image,
    no query text) in the first `memorize_epochs` epochs; `phase` is not handed to the model's collate."""
    from genretr import mllm_stage as M

    ds, _, table = toy
    samples = M.training_samples(ds, table, ["t2i"], {}, True, 1, True, False)
    dm = M.SampleDataModule(samples, lambda batch: batch, batch_size=4, seed=0, schedule="phased", memorize_epochs=1)
    assert dm.memorize_epochs == 1
    loader = dm.train_dataloader()
    for epoch, texts in [(0, set()), (1, {None, "a red circle", "a blue square"})]:
        loader.sampler.set_epoch(epoch)
        drawn = [x for batch in loader for x in batch]
        assert len(drawn) == (4 if epoch == 0 else 6) and {x["text"] for x in drawn} == (texts or {None})
        assert all("phase" not in x for x in drawn)
    assert M.SampleDataModule(samples, list, 4).memorize_epochs == 0  # interleaved: every sample every epoch


class Counting(L.LightningModule):
    """Counts the samples each epoch draws."""

    def __init__(self):
        super().__init__()
        self.w, self.seen = torch.nn.Parameter(torch.zeros(1)), {}

    def training_step(self, batch, batch_idx):
        n = len(batch["labels"]) if isinstance(batch, dict) else len(batch)
        self.seen[self.current_epoch] = self.seen.get(self.current_epoch, 0) + n
        return (self.w ** 2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("kind", ["tensors", "mllm"])
def test_phased_epochs_keep_their_length_under_a_trainer(toy, kind):
    """The memorize-only epochs draw the memorize samples, every later epoch all of them (Lightning takes an epoch's
    length before it sets the sampler's epoch); the fit's step count, which a cosine schedule spans, is theirs."""
    from genretr import mllm_stage as M
    from genretr.training import stepping_batches

    ds, emb, table = toy
    if kind == "tensors":
        dm = IdentifierDataModule(decoder_samples(ds, emb, table, ["t2i"], memorize_repeat=1), batch_size=1,
                                  schedule="phased", memorize_epochs=1)
    else:
        dm = M.SampleDataModule(M.training_samples(ds, table, ["t2i"], {}, True, 1, True, False), list, 1,
                                schedule="phased", memorize_epochs=1)
    model = Counting()
    trainer = L.Trainer(max_epochs=3, reload_dataloaders_every_n_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    assert model.seen == {0: 4, 1: 6, 2: 6}  # 4 items memorized, then 2 train queries beside them
    assert stepping_batches(trainer) == 16


def test_word_vocab_roundtrip(tmp_path):
    v = WordVocab.build(["A red circle.", "a blue square"])
    ids = v.encode(["a red square", None], 5)
    assert ids[1].eq(0).all() and ids[0, 3] == 0 and (ids[0, :3] > 1).all()
    v.save(tmp_path / "v.json")
    assert WordVocab.load(tmp_path / "v.json").tokens == v.tokens
