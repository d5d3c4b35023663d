"""MLLM retrievers (Qwen2.5-VL, LLaVA-1.6, IDEFICS) on tiny random configs: batches, LoRA, exact step decoding,
constrained search through the genretr engine, and a few steps of learning."""
import numpy as np
import pytest
import torch

from genretr.backbones.lora import LoRALinear
from genretr.backbones.mllm import ASK_REASON, IGNORE, OFFSET, retriever_class
from genretr.decoding.csr_trie import CSRTrie
from genretr.decoding.engine import beam_search, constrained_beam_search
from genretr.evaluation.scoring import identifier_scores
from genretr.decoding.protocol import StepDecoder
from genretr.errors import GenretrError, MissingWeightsError
from genretr.evaluation.metrics import retrieval_metrics

FAMILIES = ["qwen25vl", "llava", "idefics"]
IDS = ["a", "b", "c", "d"]
IDENTIFIERS = ["red circle", "red square", "blue square - left", "green star"]
REASONS = ["it is red and round", "it is a red box", "a blue box on the left", "a green star"]
QUERIES = ["a red round thing", "a red box", "a blue box at the left", "a green star shape"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8) for i in range(n)]


def tiny(family, **kw):
    torch.manual_seed(0)
    return retriever_class(family)(config={}, **kw)


@pytest.mark.parametrize("family", FAMILIES)
def test_collate_labels_only_the_answer(family):
    m = tiny(family, reason="both")
    img = images(1)[0]
    samples = [{"image": img, "answer": IDENTIFIERS[0], "reason": REASONS[0]},
               {"text": QUERIES[2], "answer": IDENTIFIERS[2], "reason": REASONS[2]}]
    b = m.collate(samples)
    assert b["input_ids"].shape == b["attention_mask"].shape == b["labels"].shape
    for row, s in enumerate(samples):
        answer = m.token_ids(s["answer"]) + [m.sep_id] + m.token_ids(f"reason: {s['reason']}") + [m.eos_id]
        labelled = b["labels"][row][b["labels"][row] != IGNORE].tolist()
        assert labelled == answer  # the loss sees the answer tokens only, and all of them
        assert b["input_ids"][row, -len(answer):].tolist() == answer  # answers end the (left-padded) rows
    assert b["attention_mask"][1, 0] == 0 or b["attention_mask"][0, 0] == 0  # the shorter row is left-padded
    prompt_only = m.collate([{"text": QUERIES[0]}])
    assert "labels" not in prompt_only


@pytest.mark.parametrize("mode", ["both", "train_only", "none"])
def test_reason_modes(mode):
    m = tiny("llava", reason=mode)
    s = {"text": QUERIES[0], "answer": IDENTIFIERS[0], "reason": REASONS[0]}
    ids = m.answer_ids(s)
    if mode == "none":
        assert ids == m.token_ids(IDENTIFIERS[0]) + [m.eos_id] and m.terminator == m.eos_id
    else:
        assert ids[len(m.token_ids(IDENTIFIERS[0]))] == m.sep_id == m.terminator
        assert ids[-1] == m.eos_id
    assert (ASK_REASON in m.prompt(s, train=True)) == (mode != "none")
    assert (ASK_REASON in m.prompt(s, train=False)) == (mode == "both")  # Table III: train-only drops it at inference
    if mode != "none":
        with pytest.raises(GenretrError, match="needs a reason"):
            m.answer_ids({"text": "x", "answer": "red"})
    with pytest.raises(GenretrError, match="reason=maybe"):
        tiny("llava", reason="maybe")


@pytest.mark.parametrize("family", FAMILIES)
def test_training_step_lora_grads_only_on_adapters(family):
    m = tiny(family, lora={"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    assert any(isinstance(x, LoRALinear) for x in m.modules())
    samples = [{"image": im, "answer": a, "reason": r} for im, a, r in zip(images(2), IDENTIFIERS, REASONS)]
    samples.append({"text": QUERIES[3], "answer": IDENTIFIERS[3], "reason": REASONS[3]})
    m.train()
    loss = m.training_step(m.collate(samples), 0)
    assert torch.isfinite(loss)
    loss.backward()
    with_grad = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all(".lora_A" in n or ".lora_B" in n for n in with_grad)
    assert all(not n.startswith(m.vision_prefixes, 3) for n in with_grad)  # "hf." + vision prefix
    assert {n for n, p in m.named_parameters() if p.requires_grad} == \
        {n for n, _ in m.named_parameters() if ".lora_" in n}


def test_full_finetuning_freezes_only_the_vision_tower():
    m = tiny("qwen25vl", lora=None)
    for n, p in m.hf.named_parameters():
        assert p.requires_grad == (not n.startswith("model.visual."))
    with pytest.raises(GenretrError, match="matched no linear layer"):
        tiny("qwen25vl", lora={"rank": 2, "target_modules": ["no_such_proj"]})


@pytest.mark.parametrize("family", FAMILIES)
def test_step_decoder_matches_teacher_forcing(family):
    """Step logits (prompt once, then one token at a time, padded batch) = full forward logits, position by position."""
    m = tiny(family, reason="both").eval()
    queries = [{"text": QUERIES[2]}, {"image": images(1)[0]}, {"text": "x", "image": images(2)[1]}]
    seqs = [s + [1] for s in m.identifier_token_ids(IDENTIFIERS[1:])]
    full = m.teacher_forced_logits(queries, seqs)
    sd = m.step_decoder()
    assert isinstance(sd, StepDecoder)
    assert sd.vocab_size == m.lm_vocab_size + OFFSET == full[0].shape[1]
    T = max(map(len, seqs))
    with torch.no_grad():
        state, cache = sd.prepare(queries), sd.new_cache(len(queries), T)
        tokens = torch.zeros(len(queries), dtype=torch.long)
        for t in range(T):
            logits = sd.step(tokens, t, len(queries), 1, state, cache, T)
            for n, s in enumerate(seqs):
                if t < len(s):
                    torch.testing.assert_close(logits[n], full[n][t], atol=1e-4, rtol=0)
            tokens = torch.tensor([s[t] if t < len(s) else 0 for s in seqs])
            sd.reorder(cache, torch.arange(len(queries)), t + 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_constrained_search_returns_valid_identifiers_scored_exactly(family):
    m = tiny(family, reason="none").eval()
    table = m.id_table(IDS, IDENTIFIERS)
    trie = CSRTrie.from_table(table)
    queries = [{"text": q} for q in QUERIES[:3]] + [{"image": images(1)[0]}]
    res = beam_search(m, queries, trie, num_beams=len(IDS), batch_size=3)
    every = [s + [1] for s in m.identifier_token_ids(IDENTIFIERS)]
    for q, query in enumerate(queries):
        found = [res.tokens[q, b, :int(res.lengths[q, b])].tolist() for b in range(len(IDS))]
        assert sorted(found) == sorted(every)  # beams = identifiers: every one found, nothing else
        teacher = m.sequence_scores([query] * len(found), found)
        torch.testing.assert_close(res.scores[q], teacher, atol=1e-4, rtol=0)
        exhaustive = m.sequence_scores([query] * len(every), every)
        assert table.items_of(found[0]) == [IDS[int(exhaustive.argmax())]]
    rankings, scores, qps = constrained_beam_search(m, queries, trie, table, num_beams=2, top_k=2,
                                                    return_scores=True)
    assert qps > 0 and all(len(r) == 2 and set(r) <= set(IDS) for r in rankings)
    for q, ranked in enumerate(rankings):  # results.html's teacher-forced scores are the beams' (issue 19)
        shown = identifier_scores(m, queries[q:q + 1], table.subset(ranked).sequences)
        torch.testing.assert_close(torch.tensor(shown), torch.tensor(scores[q]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_memorize_and_retrieve_learns_the_identifiers(family):
    """GRACE's two samples per item (short instructions), 80 full fine-tuning steps: every training caption
    retrieves its item (R@1 = 1)."""
    m = tiny(family, reason="none", lr=1e-2, warmup_steps=1)
    samples = [{"text": q, "answer": a, "instruction": "Find:"} for q, a in zip(QUERIES[:3], IDENTIFIERS[:3])]
    samples += [{"image": im, "answer": a, "instruction": "Id:"} for im, a in zip(images(3), IDENTIFIERS[:3])]
    batch, opt = m.collate(samples), m.configure_optimizers()["optimizer"]
    m.train()
    for _ in range(80):
        opt.zero_grad()
        m.loss(batch).backward()
        opt.step()
    table = m.id_table(IDS[:3], IDENTIFIERS[:3])
    queries = [{"text": q, "instruction": "Find:"} for q in QUERIES[:3]]
    rankings, _ = constrained_beam_search(m, queries, CSRTrie.from_table(table), table, num_beams=3, top_k=3)
    assert retrieval_metrics(rankings, [[i] for i in IDS[:3]])["R@1"] == 1.0


def test_identifier_tokens_live_in_the_decoding_space():
    m = tiny("qwen25vl", reason="both")
    ids = m.identifier_token_ids(["red circle"])[0]
    assert [i - OFFSET for i in ids] == m.token_ids("red circle") and min(ids) >= OFFSET
    vocab = m.decoding_vocab()
    assert len(vocab) == m.lm_vocab_size + OFFSET and vocab[:2] == ["<pad>", "</s>"]
    logits = torch.randn(2, m.lm_vocab_size)
    dec = m.to_decoding(logits)
    assert torch.equal(dec[:, 1], logits[:, m.terminator]) and torch.isinf(dec[:, 0]).all()
    assert torch.allclose(dec.logsumexp(-1), logits.logsumexp(-1))  # same distribution, relabelled
    assert m.to_llm(torch.tensor([0, 1, 2 + 7])).tolist() == [m.pad_id, m.terminator, 7]
    with pytest.raises(GenretrError, match="terminator"):
        m.identifier_token_ids(["red\ncircle"])


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_weights_is_one_clear_error(family, tmp_path):
    cls = retriever_class(family)
    with pytest.raises(MissingWeightsError, match=f"backbone {family}: no weights at .*huggingface-cli download"):
        cls(pretrained=str(tmp_path / "absent"))
    with pytest.raises(MissingWeightsError, match="not in the HF cache"):
        cls(pretrained="genretr-tests/no-such-checkpoint")
    with pytest.raises(GenretrError, match="pretrained=PATH"):
        cls()


def test_bad_samples_and_images():
    m = tiny("idefics")
    with pytest.raises(GenretrError, match="sample 0 has neither"):
        m.collate([{"answer": "x"}])
    with pytest.raises(GenretrError, match="uint8 HxWx3"):
        m.collate([{"image": np.zeros((8, 8)), "answer": "x", "reason": "y"}])


def test_lightning_fit_and_state_dict_round_trip(tmp_path):
    """A Lightning Trainer fits from a DataLoader collated by the model; a rebuilt model loads the weights back."""
    import lightning as L
    from torch.utils.data import DataLoader

    m = tiny("llava", reason="both", lora={"rank": 2, "alpha": 4}, lr=1e-2, warmup_steps=1)
    samples = [{"text": q, "answer": a, "reason": r} for q, a, r in zip(QUERIES, IDENTIFIERS, REASONS)]
    samples += [{"image": im, "answer": a, "reason": r} for im, a, r in zip(images(2), IDENTIFIERS, REASONS)]
    before = m.loss(m.collate(samples)).item()
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(m, DataLoader(samples, batch_size=3, shuffle=True, collate_fn=m.collate))
    m.eval()
    after = m.loss(m.collate(samples)).item()
    assert after < before
    again = tiny("llava", reason="both", lora={"rank": 2, "alpha": 4})
    again.load_state_dict(m.state_dict())
    again.eval()
    q = [{"text": QUERIES[0]}]
    torch.testing.assert_close(again.step_decoder().prepare(q).logits, m.step_decoder().prepare(q).logits)
