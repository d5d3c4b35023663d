"""The trainable-state contract (genretr.training): an MLLM under LoRA saves and checkpoints its adapters and
identifier-token rows only, and a model rebuilt under the same seed loads them back to the same function;
a T5 decoder, which has no `trainable_state_dict`, is saved whole as before."""
import io

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from genretr.backbones.lora import LoRALinear
from genretr.backbones.mllm import retriever_class
from genretr.backbones.t5_prefix import T5PrefixDecoder
from genretr.errors import GenretrError
from genretr.training import FROZEN_FINGERPRINT, check_trainable_state, load_trained_state, trained_state

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
LORA = {"rank": 4, "alpha": 8}
TOKENS = ["<i0>", "<i1>", "<i2>"]
SAMPLES = [{"text": q, "answer": a, "instruction": "Find:"}
           for q, a in zip(["a red box", "a blue star", "a green tree"], TOKENS)]
QUERY = [{"text": "a red box", "instruction": "Find:"}]


def qwen(seed=0, **kw):
    torch.manual_seed(seed)
    return retriever_class("qwen25vl")(config={}, reason="none", lora=LORA, identifier_tokens=TOKENS, **kw)


def nbytes(state: dict) -> int:
    return sum(v.numel() * v.element_size() for v in state.values())


def fitted(m, tmp_path, epochs, resume=None):
    """`m` fitted by Lightning for `epochs` epochs (from checkpoint `resume`), a checkpoint saved each epoch."""
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="epoch{epoch}", save_last=True, save_top_k=-1,
                           auto_insert_metric_name=False)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, callbacks=[ckpt],
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=str(tmp_path))
    trainer.fit(m, DataLoader(SAMPLES, batch_size=2, collate_fn=m.collate), ckpt_path=resume)
    return m.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Qwen under LoRA with three identifier tokens, fitted two epochs by Lightning (checkpoints kept)."""
    workdir = tmp_path_factory.mktemp("ckpt")
    return fitted(qwen(lr=1e-2, warmup_steps=1), workdir, 2), workdir


def test_saved_state_is_the_adapters_and_the_new_rows(trained):
    m, _ = trained
    state = trained_state(m)
    lora = {f"{n}.{p}" for n, mod in m.named_modules() if isinstance(mod, LoRALinear) for p in ("lora_A", "lora_B")}
    fingerprint = state.pop(FROZEN_FINGERPRINT)  # one sum per frozen entry: what the adapters sit on
    assert lora and set(state) == lora | {"hf.model.language_model.embed_tokens.rows", "hf.lm_head.rows"}
    full = m.state_dict()
    assert len(fingerprint) == len(full) - len(state)
    assert nbytes(state) < 0.1 * nbytes(full)  # 16.9 of 394 kB here; 7B at rank 8: ~81 MB of 15 GB
    assert all(torch.equal(state[k], full[k]) for k in state)


def test_reload_over_a_seeded_rebuild_gives_the_same_logits(trained, tmp_path):
    m, _ = trained
    torch.save(trained_state(m), tmp_path / "model.pt")
    saved = torch.load(tmp_path / "model.pt")
    again = qwen()
    load_trained_state(again, saved)
    want = m.step_decoder().prepare(QUERY).logits
    assert torch.equal(again.eval().step_decoder().prepare(QUERY).logits, want)
    other = qwen(seed=1)  # other frozen weights (a changed checkpoint, another seed): refused, not loaded
    with pytest.raises(GenretrError, match="the frozen weights differ from those the saved adapters were trained on"):
        load_trained_state(other, saved)


def test_lightning_checkpoint_holds_the_trainable_state_only(trained):
    m, workdir = trained
    ckpt = torch.load(workdir / "last.ckpt", weights_only=False)
    assert set(ckpt["state_dict"]) == set(m.trainable_state_dict())
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in ckpt["state_dict"].items())


def test_resumed_fit_ends_where_an_uninterrupted_one_does(trained, tmp_path):
    m, workdir = trained
    resumed = fitted(qwen(lr=1e-2, warmup_steps=1), tmp_path, 2, resume=str(workdir / "epoch0.ckpt"))
    want = m.trainable_state_dict()
    got = resumed.trainable_state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert not torch.equal(want["hf.lm_head.rows"], qwen().hf.lm_head.rows)  # training moved the rows


def test_a_state_missing_a_trainable_key_or_with_a_stranger_is_refused(trained):
    m, workdir = trained
    state = trained_state(m)
    lost = next(k for k in state if k.endswith("lora_B"))
    with pytest.raises(GenretrError, match=rf"1 trainable entries missing \['{lost}'\]"):
        load_trained_state(qwen(), {k: v for k, v in state.items() if k != lost})
    with pytest.raises(GenretrError, match=r"1 unknown \['hf.extra'\]"):
        load_trained_state(qwen(), {**state, "hf.extra": torch.zeros(1)})
    ckpt = torch.load(workdir / "last.ckpt", weights_only=False)
    del ckpt["state_dict"]["hf.lm_head.rows"]
    with pytest.raises(GenretrError, match="hf.lm_head.rows"):  # resuming checks the checkpoint alike
        check_trainable_state(qwen(), ckpt["state_dict"])
    model = qwen()
    with pytest.raises(GenretrError, match="hf.lm_head.rows"):  # through Lightning's hook
        model.on_load_checkpoint(ckpt)
    model.on_load_checkpoint({"epoch": 0, "global_step": 4})  # DeepSpeed's: its engine restores the weights itself
    no_tokens = retriever_class("qwen25vl")(config={}, reason="none", lora=LORA)
    with pytest.raises(GenretrError, match="unknown"):  # rows for identifier tokens the model lacks
        load_trained_state(no_tokens, state)


def test_full_finetuning_saves_all_but_the_frozen_vision_tower():
    torch.manual_seed(0)
    m = retriever_class("qwen25vl")(config={}, reason="none", lora=None)
    state = m.trainable_state_dict()
    assert state and set(state) == {k for k in m.state_dict() if not k.startswith("hf.model.visual.")}


def test_t5_saves_its_whole_state_dict_as_before():
    torch.manual_seed(0)
    m = T5PrefixDecoder(vocab_size=20, input_dim=8, d_model=16, num_layers=1, num_heads=2, d_ff=32, prefix_len=2,
                        prefix_hidden=16, encoder_layers=1)
    assert not hasattr(m, "trainable_state_dict")
    new, old = io.BytesIO(), io.BytesIO()
    torch.save(trained_state(m), new)
    torch.save({k: v.cpu() for k, v in m.state_dict().items()}, old)  # the train stage's model.pt until now
    assert set(trained_state(m)) == set(m.state_dict()) and new.getvalue() == old.getvalue()
    again = T5PrefixDecoder(vocab_size=20, input_dim=8, d_model=16, num_layers=1, num_heads=2, d_ff=32,
                            prefix_len=2, prefix_hidden=16, encoder_layers=1)
    load_trained_state(again, torch.load(io.BytesIO(new.getvalue())))
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in again.state_dict().items())
    with pytest.raises(RuntimeError, match="Missing key"):  # loaded strictly, as before
        load_trained_state(again, {k: v for k, v in trained_state(m).items() if not k.startswith("prefix")})
