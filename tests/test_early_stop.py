"""backbone.fit.early_stop: held-out training queries (`IdentifierDataModule`), the validation step of the
sequence decoders, and `genretr.training.EarlyStop` (stop, best weights, resume after the decision)."""
import sys
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from genretr.backbones.cart import CartSeq2Seq
from genretr.backbones.t5_prefix import T5PrefixDecoder
from genretr.data.datamodules import IdentifierDataModule, heldout_rows
from genretr.errors import GenretrError
from genretr.samples import concat_samples
from genretr.training import EarlyStop, early_stop_callbacks, early_stop_holdout, fit, log_heldout

# val_exact of epochs 0, 1, ...: best at epoch 2, then no improvement
SCORES = [0.1, 0.3, 0.6, 0.5, 0.55, 0.4, 0.7, 0.9]


def test_held_out_rows_are_whole_queries_drawn_by_the_seed():
    query = torch.tensor([-1, -1, 0, 0, 1, 2, 2, 2, 3, -1] + list(range(4, 40)))
    held = heldout_rows(query, 0.25, seed=3)
    chosen = set(query[held].tolist())
    assert -1 not in chosen and len(chosen) == 10  # a quarter of the 40 queries
    assert all(bool(held[k]) == (int(q) in chosen) for k, q in enumerate(query))  # every sample of a chosen query
    assert torch.equal(held, heldout_rows(query, 0.25, seed=3))
    assert not torch.equal(held, heldout_rows(query, 0.25, seed=4))
    assert heldout_rows(query, 0.0, seed=3) is None
    with pytest.raises(GenretrError, match="must lie in"):
        heldout_rows(query, 1.5, seed=0)


def samples(n_queries=20, width=3):
    """Two memorize rows, then two samples per training query; labels end with EOS (1)."""
    query = torch.tensor([-1, -1] + [q for q in range(n_queries) for _ in range(2)])
    n = len(query)
    labels = torch.randint(2, 9, (n, width))
    labels[:, -1] = 1
    return {"z": torch.randn(n, 6), "target_z": torch.randn(n, 6), "labels": labels,
            "phase": (query >= 0).long(), "query": query}


def test_the_datamodule_trains_on_the_rest_and_validates_on_the_held_out_queries():
    s = samples()
    dm = IdentifierDataModule(s, batch_size=8, seed=1, holdout=0.2)
    held = heldout_rows(s["query"], 0.2, 1)
    assert len(dm.val) == 8 and len(dm.data) == len(s["labels"]) - 8  # 4 of 20 queries, two samples each
    assert torch.equal(dm.val.tensors["labels"], s["labels"][held])
    assert "query" not in dm.data.tensors and dm.memorize_rows == [0, 1]
    assert IdentifierDataModule(s, batch_size=8).val is None
    assert IdentifierDataModule(s, batch_size=8).val_dataloader() == []
    assert len(IdentifierDataModule(s, batch_size=8, holdout=0.01).val) == 2  # at least one query
    with pytest.raises(GenretrError, match="none to validate on"):
        IdentifierDataModule({**s, "query": torch.full_like(s["query"], -1)}, batch_size=8, holdout=0.2)


def test_concatenated_samples_without_a_query_column_are_not_held_out():
    a, b = samples(), samples()
    del b["query"]
    both = concat_samples(a, b)
    assert torch.equal(both["query"][len(a["labels"]):], torch.full((len(b["labels"]),), -1))


def test_log_heldout_counts_a_sequence_exact_only_when_every_target_token_is_argmax():
    labels = torch.tensor([[3, 1, 0], [4, 1, 0]])
    logits = torch.full((2, 3, 6), -5.0)
    for i, seq in enumerate([[3, 1, 5], [4, 2, 0]]):  # row 0: right up to EOS (PAD after it ignored); row 1 wrong
        for t, tok in enumerate(seq):
            logits[i, t, tok] = 5.0
    logged = {}
    module = SimpleNamespace(log=lambda k, v, **kw: logged.__setitem__(k, float(v)))
    log_heldout(module, logits, labels, pad=0)
    assert logged["decoder/val_exact"] == 0.5
    assert logged["decoder/val_loss"] > 0


@pytest.mark.parametrize("model", ["t5", "cart"])
def test_both_sequence_decoders_validate(model):
    torch.manual_seed(0)
    if model == "t5":
        m = T5PrefixDecoder(vocab_size=10, input_dim=6, d_model=16, num_layers=1, num_heads=2, d_ff=32,
                            prefix_len=2, prefix_hidden=16)
        batch = {"z": torch.randn(4, 6)}
    else:
        m = CartSeq2Seq(vocab_size=10, src_vocab_size=12, d_model=16, heads=2, d_ff=32, encoder_layers=1,
                        decoder_layers=1, max_src_len=5, max_tgt_len=4)
        batch = {"src": torch.randint(2, 12, (4, 5))}
    logged = {}
    m.log = lambda k, v, **kw: logged.__setitem__(k, float(v))
    m.eval()
    labels = torch.tensor([[3, 4, 1], [5, 1, 0], [2, 2, 1], [6, 1, 0]])
    m.validation_step({**batch, "labels": labels})
    assert set(logged) == {"decoder/val_loss", "decoder/val_exact"}
    # the held-out loss is the training loss (without dropout) on those samples
    with torch.no_grad():
        train_loss = m(batch["z"], labels) if model == "t5" else m.loss_terms(batch["src"], labels)[0]
    assert logged["decoder/val_loss"] == pytest.approx(float(train_loss), rel=1e-5)


class Scripted(L.LightningModule):
    """One weight that moves every step; validation reports SCORES[epoch] as the held-out exact match."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return ((self.w - 10.0) ** 2).sum()

    def validation_step(self, batch, batch_idx):
        self.log("decoder/val_exact", SCORES[self.current_epoch], on_epoch=True, batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Batches(L.LightningDataModule):
    def train_dataloader(self):
        return [torch.zeros(1)] * 3

    def val_dataloader(self):
        return [torch.zeros(1)]


def run_fit(workdir, max_epochs, patience=2, min_epochs=0):
    cfg = OmegaConf.create({"seed": 0, "progress": False,
                            "trainer": {"_target_": "lightning.Trainer", "accelerator": "cpu", "devices": 1,
                                        "num_sanity_val_steps": 0, "enable_model_summary": False}})
    stop = EarlyStop(patience, "exact", min_epochs=min_epochs)
    trainer_w = []

    class Record(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            trainer_w.append(float(module.w))

    m = Scripted()
    m.fitted_by = fit(m, Batches(), cfg, workdir, max_epochs, callbacks=[stop, Record()])
    return m, stop, trainer_w


def test_early_stop_ends_with_the_best_epochs_weights(tmp_path):
    m, stop, w = run_fit(tmp_path / "a", max_epochs=8)
    assert stop.best_epoch == 2 and len(w) == 5  # epochs 3 and 4 did not improve on 0.6: stop after epoch 4
    assert float(m.w) == pytest.approx(w[2])
    m, stop, w = run_fit(tmp_path / "b", max_epochs=8, min_epochs=7)  # no stop before 7 epochs: 0.9 at epoch 7
    assert stop.best_epoch == 7 and len(w) == 8 and float(m.w) == pytest.approx(w[7])


def test_on_a_tie_the_later_weights_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "SCORES", [0.0, 0.0, 0.0, 0.0])
    m, stop, w = run_fit(tmp_path, max_epochs=4, patience=2)  # no improvement after epoch 0: stop after epoch 2
    assert stop.best_epoch == 2 and len(w) == 3 and float(m.w) == pytest.approx(w[2])


def test_a_run_resumed_after_the_decision_stops_at_once_with_the_same_weights(tmp_path):
    whole, _, _ = run_fit(tmp_path / "whole", max_epochs=8)
    run_fit(tmp_path / "killed", max_epochs=5)  # ends with epoch 4, where the stop was decided
    resumed, stop, w = run_fit(tmp_path / "killed", max_epochs=8)
    assert w == [] and stop.best_epoch == 2  # no epoch after the resume
    assert float(resumed.w) == float(whole.w)
    assert resumed.fitted_by.current_epoch == whole.fitted_by.current_epoch == 5  # fit.json's epochs agree


def test_early_stop_options_and_bad_values():
    off = [OmegaConf.create({"max_epochs": 3}), OmegaConf.create({"early_stop": {"patience": 0, "holdout": 0.1}})]
    assert all(early_stop_holdout(f) == 0.0 and early_stop_callbacks(f) == [] for f in off)
    fit_cfg = OmegaConf.create({"early_stop": {"patience": 3, "holdout": 0.1, "monitor": "loss", "min_epochs": 4}})
    (cb,) = early_stop_callbacks(fit_cfg)
    assert early_stop_holdout(fit_cfg) == 0.1
    assert (cb.key, cb.sign, cb.patience, cb.min_epochs) == ("decoder/val_loss", -1.0, 3, 4)
    (phased,) = early_stop_callbacks(fit_cfg, memorize_epochs=5)  # memorize-only epochs see no queries
    assert phased.min_epochs == 8
    with pytest.raises(GenretrError, match="monitor=acc"):
        EarlyStop(2, "acc")
    assert EarlyStop(2).summary()["best"] is None  # nothing scored: no -inf in fit.json


def test_a_run_stops_early_and_says_so_in_results(make_cfg, tmp_path):
    """No held-out score can improve by 2: the decoder stops once `min_epochs` allow it, after epoch 1 of 6."""
    import json

    import torch

    from genretr.run import execute

    threads = torch.get_num_threads()
    try:
        stop = ["threads=1", "backbone.fit.max_epochs=6", "backbone.fit.early_stop.patience=1",
                "backbone.fit.early_stop.min_epochs=2", "backbone.fit.early_stop.min_delta=2.0"]
        execute(make_cfg(*stop, run="stop"), tmp_path / "stop")
        execute(make_cfg("threads=1", "backbone.fit.max_epochs=3", run="full"), tmp_path / "full")
    finally:
        torch.set_num_threads(threads)
    stopped = json.loads((tmp_path / "stop" / "results.json").read_text())["training"]
    assert stopped["max_epochs"] == 6 and stopped["epochs"] == 2
    assert stopped["early_stop"]["best_epoch"] in (0, 1) and stopped["early_stop"]["monitor"] == "decoder/val_loss"
    assert json.loads((tmp_path / "stop" / "artifacts" / "train" / "fit.json").read_text()) == stopped
    full = json.loads((tmp_path / "full" / "results.json").read_text())["training"]
    assert full == {"max_epochs": 3, "epochs": 3}  # patience 0 (the default): every epoch, nothing held out
