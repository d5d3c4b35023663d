"""The MLLM backbones' real load path: ``pretrained=DIR`` on tiny checkpoints written by ``save_pretrained``
(tests/backbones/checkpoints.py: trained tokenizers, the families' chat templates and image processors).

Loaded weights equal the saved ones; prompts go through the checkpoint's chat template; batches, labels, a few
training steps (the conf/backbone settings: LoRA, gradient checkpointing), constrained search over a pool and
SSID generation (conf/generator) all run on the loaded model; the hub's Qwen file layout loads the same; a model
fine-tuned, saved and loaded back as the SSID generator writes each image's answer; a missing, empty or partial
directory is one `MissingWeightsError`."""
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from genretr.backbones.mllm import IGNORE, OFFSET, retriever_class
from genretr.backbones.mllm_generator import MLLMGenerator
from genretr.data.schema import Item
from genretr.decoding.csr_trie import CSRTrie
from genretr.decoding.engine import beam_search, constrained_beam_search
from genretr.errors import GenretrError, MissingWeightsError
from genretr.generators import Request
from genretr.identifiers.base import IdentifierContext
from genretr.identifiers.ssid import SsidIdentifier
from tests.backbones.checkpoints import FAMILIES, IDENTIFIERS, MARKERS, QUERIES, REASONS, qwen_hub_layout
from tests.conftest import CONF

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
IDS = ["a", "b", "c", "d"]
IMAGE_TOKENS = {"qwen25vl": "<|image_pad|>", "llava": "<image>", "idefics": "<image>"}


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8) for i in range(n)]


def load(family, path, **kw):
    kw = {"dtype": "float32", "lora": None, **kw}
    return retriever_class(family)(pretrained=str(path), **kw)


def conf_model(family, path, **kw):
    """The retriever as conf/backbone/<family>.yaml builds it (LoRA, gradient checkpointing), from `path`."""
    from hydra.utils import instantiate

    cfg = OmegaConf.load(CONF / "backbone" / f"{family}.yaml").model
    cfg.merge_with({"pretrained": str(path), "dtype": "float32", **kw})
    return instantiate(cfg)


@pytest.mark.parametrize("family", FAMILIES)
def test_load_restores_the_saved_weights_and_processor(family, mllm_checkpoint):
    path = mllm_checkpoint(family)
    m = load(family, path)
    saved = list(load_file(path / "model.safetensors").values())  # hub (legacy) names: match by value
    params = list(m.hf.parameters())
    assert len(params) == len(saved)
    for p in params:  # every parameter is a saved tensor, bit for bit (nothing left randomly initialised)
        assert any(p.shape == w.shape and torch.equal(p, w) for w in saved)
    tok, saved_tok = m.processor.tokenizer, json.loads((path / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in saved_tok["added_tokens"]}
    assert tok.get_vocab() == {**saved_tok["model"]["vocab"], **added}  # the trained vocabulary + the specials
    assert (m.eos_id, m.pad_id) == (tok.eos_token_id, tok.pad_token_id) and m.eos_id != m.pad_id
    assert tok.decode([m.sep_id]) == "\n"
    for special in (IMAGE_TOKENS[family], tok.eos_token):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1  # special tokens stay whole
    assert m.lm_vocab_size >= len(tok) and len(m.decoding_vocab()) == m.lm_vocab_size + OFFSET


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_goes_through_the_checkpoints_chat_template(family, mllm_checkpoint):
    m = load(family, mllm_checkpoint(family))
    with_image = m.prompt({"image": images(1)[0]}, train=False)
    text_only = m.prompt({"text": QUERIES[0]}, train=False)
    for p in (with_image, text_only):
        assert MARKERS[family] in p and not p.startswith("USER: ")  # the checkpoint's template, not genretr's plain one
    assert IMAGE_TOKENS[family] in with_image and IMAGE_TOKENS[family] not in text_only
    assert f"query: {QUERIES[0]}" in text_only
    batch = m.collate([{"image": images(1)[0]}, {"text": QUERIES[0]}])
    image_id = m.processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKENS[family])
    n_image = (batch["input_ids"] == image_id).sum(1).tolist()
    assert n_image[0] >= 1 and n_image[1] == 0
    if family != "idefics":  # Qwen and LLaVA expand the placeholder to one token per image feature
        assert n_image[0] > 1
    tok = m.processor.tokenizer
    for row in range(2):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        if family == "qwen25vl":  # no bos: the template's first token opens the prompt
            assert tok.bos_token is None and ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
        else:  # Llama tokenizers: exactly one <s>, first
            assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    decoded = tok.decode(batch["input_ids"][1][batch["attention_mask"][1].bool()])
    assert MARKERS[family] in decoded and QUERIES[0] in decoded


@pytest.mark.parametrize("family", FAMILIES)
def test_collate_labels_the_answer_in_the_trained_tokenizer(family, mllm_checkpoint):
    m = load(family, mllm_checkpoint(family), reason="both")
    tok = m.processor.tokenizer
    samples = [{"image": images(1)[0], "answer": IDENTIFIERS[2], "reason": REASONS[2]},
               {"text": QUERIES[1], "answer": IDENTIFIERS[1], "reason": REASONS[1]}]
    b = m.collate(samples)
    assert b["input_ids"].shape == b["labels"].shape
    for row, s in enumerate(samples):
        labelled = b["labels"][row][b["labels"][row] != IGNORE].tolist()
        assert labelled[-1] == m.eos_id and labelled.count(m.sep_id) >= 1
        ident = labelled[:labelled.index(m.sep_id)]
        assert tok.decode(ident).strip() == s["answer"]  # the identifier, in the checkpoint's own tokens
        assert len(ident) <= len(s["answer"].split()) + 2  # a trained BPE: words are few tokens, not characters
        assert tok.decode(labelled[labelled.index(m.sep_id) + 1:-1]).strip() == f"reason: {s['reason']}"
        assert b["input_ids"][row, -len(labelled):].tolist() == labelled


@pytest.mark.parametrize("family", FAMILIES)
def test_conf_backbone_training_steps_lower_the_loss(family, mllm_checkpoint):
    """conf/backbone/<family>.yaml (LoRA on the LLM, gradient checkpointing) on the loaded model: three AdamW
    steps lower the loss; the base weights stay the saved ones."""
    path = mllm_checkpoint(family)
    m = conf_model(family, path, lr=3e-2, warmup_steps=1, reason="none")
    hf = m.hf  # the property's name since transformers 5 (is_gradient_checkpointing warns)
    assert hf.is_activation_checkpointing if hasattr(type(hf), "is_activation_checkpointing") else \
        hf.is_gradient_checkpointing
    samples = [{"text": q, "answer": a} for q, a in zip(QUERIES, IDENTIFIERS)]
    samples += [{"image": im, "answer": a} for im, a in zip(images(2), IDENTIFIERS)]
    batch, opt = m.collate(samples), m.configure_optimizers()["optimizer"]
    m.train()
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = m.loss(batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    m.eval()
    with torch.no_grad():
        final = m.loss(batch).item()
    assert all(np.isfinite(losses)) and final < losses[0] - 0.05, losses + [final]
    fresh = load(family, path).hf.state_dict()
    for name, w in m.hf.state_dict().items():  # LoRA: the loaded base weights are untouched
        if ".lora_" not in name:
            assert torch.equal(w, fresh[name.replace(".base.", ".")]), name


@pytest.mark.parametrize("family", FAMILIES)
def test_constrained_search_returns_pool_identifiers(family, mllm_checkpoint):
    m = load(family, mllm_checkpoint(family), reason="none").eval()
    table = m.id_table(IDS, IDENTIFIERS)
    trie = CSRTrie.from_table(table)
    queries = [{"text": q} for q in QUERIES[:2]] + [{"image": images(1)[0]}]
    res = beam_search(m, queries, trie, num_beams=len(IDS), batch_size=2)
    every = sorted(s + [1] for s in m.identifier_token_ids(IDENTIFIERS))
    for q in range(len(queries)):
        found = sorted(res.tokens[q, b, :int(res.lengths[q, b])].tolist() for b in range(len(IDS)))
        assert found == every  # the beams are exactly the pool's identifiers
    rankings, _ = constrained_beam_search(m, queries, trie, table, num_beams=3, top_k=3)
    assert all(len(r) == 3 == len(set(r)) and set(r) <= set(IDS) for r in rankings)


@pytest.mark.parametrize("family", FAMILIES)
def test_ssid_generator_loads_the_checkpoint_and_writes_identifiers(family, mllm_checkpoint, tmp_path):
    """conf/generator/<family>.yaml with pretrained=DIR (bfloat16, as configured): the SSID stage gets an answer
    per image and writes an identifier for each item."""
    from hydra.utils import instantiate

    cfg = OmegaConf.load(CONF / "generator" / f"{family}.yaml")
    cfg.merge_with({"pretrained": str(mllm_checkpoint(family)), "device": "cpu", "max_new_tokens": 12})
    gen = instantiate(cfg)
    raws = []
    generate = gen.generate
    gen.generate = lambda reqs: raws.extend(out := generate(reqs)) or out
    imgs = np.stack(images(2)[:1] * 2)
    items = [Item("x0", "image", image=0), Item("x1", "image", image=1)]
    ctx = IdentifierContext(workdir=tmp_path, images=imgs, train_texts=["a red circle", "a blue square"])
    table = SsidIdentifier(gen, retries=0, batch_size=2).build(items, np.zeros((2, 4), np.float32), ctx)
    assert gen.load().hf.dtype == torch.bfloat16
    assert len(raws) == 2 and all(isinstance(r, str) and r.strip() for r in raws)  # the model answered
    assert raws[0] == raws[1]  # same image, same prompt, greedy
    summary = json.loads((tmp_path / "ssid_summary.json").read_text())
    records = [json.loads(x) for x in Path(summary["cache"]).read_text().splitlines()]
    assert sorted(r["item_id"] for r in records) == ["x0", "x1"] and {r["raw"] for r in records} == {raws[0]}
    for it in ("x0", "x1"):
        assert table.text(it).strip()  # an identifier for every image: parsed, or the fallback's words


def test_qwen_hub_layout_loads_like_save_pretrained(mllm_checkpoint, tmp_path):
    """The hub repo's file layout (legacy config, preprocessor_config.json, chat_template.json) loads to the same
    model, image sizes and prompt as the save_pretrained layout."""
    path = mllm_checkpoint("qwen25vl")
    hub = load("qwen25vl", qwen_hub_layout(path, tmp_path / "hub"))
    ref = load("qwen25vl", path)
    ip = hub.processor.image_processor
    assert (ip.size.shortest_edge, ip.size.longest_edge, ip.merge_size) == (28 * 28, 56 * 56, 2)
    sample = {"image": images(1)[0], "text": QUERIES[0]}
    assert hub.prompt(sample, train=False) == ref.prompt(sample, train=False)
    batch = ref.collate([sample])
    assert torch.equal(hub.collate([sample])["input_ids"], batch["input_ids"])
    assert batch["image_grid_thw"].tolist() == [[1, 2, 4]]  # 40x48 -> 2x4 patches of 14 (max_pixels 56*56)
    with torch.no_grad():
        torch.testing.assert_close(hub(batch), ref(batch), rtol=0, atol=0)


def test_generation_is_deterministic_and_sees_the_image(mllm_checkpoint):
    gen = MLLMGenerator(model="qwen25vl", pretrained=str(mllm_checkpoint("qwen25vl")), max_new_tokens=6,
                        dtype="float32", device="cpu")
    imgs = images(2)
    reqs = [Request("a", "describe", image=imgs[0]), Request("b", "describe", image=imgs[1])]
    out = gen.generate(reqs)
    assert len(out) == 2 and out == gen.generate(reqs)
    state = gen.load().step_decoder().prepare([{"prompt": "describe", "image": im} for im in imgs])
    assert not torch.allclose(state.logits[0], state.logits[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_empty_or_partial_dir_is_one_clear_error(family, mllm_checkpoint, tmp_path):
    start = time.monotonic()
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "absent", tmp_path / "empty"):
        with pytest.raises(MissingWeightsError, match=f"backbone {family}: no weights at '{path}'"):
            load(family, path)
    partial = tmp_path / "weights_only"  # a model saved without its processor
    partial.mkdir()
    for name in ("config.json", "model.safetensors"):
        (partial / name).write_bytes((mllm_checkpoint(family) / name).read_bytes())
    with pytest.raises(MissingWeightsError, match="image processor"):
        load(family, partial)
    cls = retriever_class(family)  # the check before any stage runs: config and weights present, nothing loaded
    cls.check_weights(str(mllm_checkpoint(family)))
    cls.check_weights(str(partial))
    (partial / "model.safetensors").unlink()
    for path, problem in ((tmp_path / "absent", "is not a model directory"), (tmp_path / "empty", "no config.json"),
                          (partial, "no model.safetensors"), ("genretr-tests/absent", "nor in the Hugging Face cache")):
        with pytest.raises(MissingWeightsError, match=f"backbone {family}: no weights at .*{problem}"):
            cls.check_weights(str(path))
    gen = MLLMGenerator(model=family, pretrained=str(tmp_path / "absent"), device="cpu")
    with pytest.raises(MissingWeightsError, match="backbone.model.pretrained=DIR"):
        gen.generate([Request("a", "p")])
    assert time.monotonic() - start < 20  # no network, no retries


@pytest.mark.parametrize("family", [pytest.param("qwen25vl", marks=pytest.mark.slow),
                                    pytest.param("llava", marks=pytest.mark.slow), "idefics"])
def test_finetuned_checkpoint_writes_each_images_ssid_answer(family, mllm_checkpoint, tmp_path):
    """Fine-tune the loaded model on SSID's own requests (image + Sec. III-E prompt -> the three lines), save it
    with ``save_pretrained``, load it back as the SSID generator: each image gets its own strict answer."""
    imgs = np.zeros((2, 40, 48, 3), np.uint8)
    imgs[0, ..., 0], imgs[1, ..., 1], imgs[1, :20] = 230, 200, 255
    items = [Item("x0", "image", image=0), Item("x1", "image", image=1)]
    ctx = IdentifierContext(workdir=tmp_path / "ssid", images=imgs, train_texts=["a red circle"])
    answers = [f"caption:a {IDENTIFIERS[0]}\nidentifier:{IDENTIFIERS[0]}\nreason:{REASONS[0]}",
               f"caption:a {IDENTIFIERS[3]}\nidentifier:{IDENTIFIERS[3]}\nreason:{REASONS[3]}"]
    requests = SsidIdentifier(MLLMGenerator(model=family)).requests(items, ctx)
    torch.manual_seed(0)
    m = load(family, mllm_checkpoint(family), reason="none", freeze_vision=False, lr=5e-3, warmup_steps=1)
    batch = m.collate([{"prompt": r.prompt, "image": r.image, "answer": a} for r, a in zip(requests, answers)])
    opt = m.configure_optimizers()["optimizer"]
    m.train()
    for _ in range(100):
        opt.zero_grad()
        m.loss(batch).backward()
        opt.step()
    m.hf.save_pretrained(tmp_path / "finetuned")
    m.processor.save_pretrained(tmp_path / "finetuned")
    gen = MLLMGenerator(model=family, pretrained=str(tmp_path / "finetuned"), max_new_tokens=40, dtype="float32",
                        device="cpu")
    table = SsidIdentifier(gen, retries=0).build(items, np.zeros((2, 4), np.float32), ctx)
    summary = json.loads((ctx.workdir / "ssid_summary.json").read_text())
    assert summary["outcomes"]["strict"] == 2, summary
    assert [table.text("x0"), table.text("x1")] == [IDENTIFIERS[0], IDENTIFIERS[3]]
    assert table.reasons == {"x0": REASONS[0], "x1": REASONS[3]}


OTHER_ARCHITECTURE = {"qwen25vl": "qwen2_vl", "llava": "llava", "idefics": "idefics2"}  # what a user may point at


@pytest.mark.parametrize("family", FAMILIES)
def test_a_checkpoint_of_another_architecture_is_refused_before_it_loads(family, mllm_checkpoint, tmp_path):
    """transformers loads a LLaVA-1.5 checkpoint into LLaVA-NeXT's classes (an Idefics2 one into Idefics') with
    a warning only; the run failed at its first image, after the weights had loaded."""
    other, found = tmp_path / "other", OTHER_ARCHITECTURE[family]
    other.mkdir()
    config = json.loads((mllm_checkpoint(family) / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": found}))
    (other / "model.safetensors").write_bytes((mllm_checkpoint(family) / "model.safetensors").read_bytes())
    cls = retriever_class(family)
    refused = rf"backbone {family}: '.*other' \(backbone.model.pretrained\) holds a {found} checkpoint"
    with pytest.raises(GenretrError, match=refused):
        cls.check_weights(str(other))
    with pytest.raises(GenretrError, match=refused):
        load(family, other)
    (other / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "model_type"}))
    cls.check_weights(str(other))  # no model_type: the family's classes read it as theirs
    (other / "config.json").write_text("{not json")
    with pytest.raises(GenretrError, match=r"config.json is not a model config"):
        cls.check_weights(str(other))


@pytest.mark.parametrize("family", FAMILIES)
def test_answers_stop_at_eos_and_at_the_end_of_an_idefics_turn(family, mllm_checkpoint):
    m = load(family, mllm_checkpoint(family))
    tok = m.processor.tokenizer
    turn_end = [tok.convert_tokens_to_ids("<end_of_utterance>")] if family == "idefics" else []
    assert m.stop_ids == [tok.eos_token_id, *turn_end] and tok.eos_token_id not in turn_end
