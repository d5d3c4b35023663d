"""MLLM backbones with every identifier scheme (genretr.backbones.mllm_vocab): a scheme's own tokens
(`IdTable.new_tokens`: structured, atomic, image-token, CART and GENIUS IDs) become one new token each of the MLLM's
tokenizer with trainable embedding and LM-head rows (under LoRA too), saved and loaded with the model;
string and numeric IDs stay the LLM's own digits; the atomic classifier head ranks the items."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from genretr.backbones.mllm import OFFSET, retriever_class
from genretr.backbones.mllm_vocab import identifier_options, spelled
from genretr.decoding.csr_trie import CSRTrie
from genretr.decoding.engine import constrained_beam_search
from genretr.errors import GenretrError
from genretr.evaluation.metrics import retrieval_metrics
from genretr.evaluation.search import classifier_search
from genretr.identifiers.atomic import AtomicIdentifier
from genretr.identifiers.base import IdentifierContext, IdTable
from genretr.identifiers.cart import CartIdentifier
from genretr.identifiers.genius import GeniusIdentifier
from genretr.identifiers.image_tokens import ImageTokenIdentifier
from genretr.identifiers.numeric import NumericIdentifier
from genretr.identifiers.string import StringIdentifier
from genretr.identifiers.structured import StructuredIdentifier

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
CTX = IdentifierContext()
QUERIES = ["a red round thing", "a red box", "a blue box at the left", "a green star shape", "a dark tree",
           "a small bird"]
LORA = {"rank": 4, "alpha": 8}


def items(n):
    return [SimpleNamespace(id=f"i{k}", modality="image") for k in range(n)]


def vectors(n, d=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def cart_table(n):
    """CART's own identifiers (Sec. 3.2: coarse `c*`, fine `a{level}_*`, unique `u*`) from a tiny K-Means + RQ-VAE."""
    scheme = CartIdentifier(k=2, num_codebooks=2, codebook_size=3, latent_dim=4, hidden=[8], epochs=2,
                            warmup_epochs=1, batch_size=4)
    return scheme.build(items(n), vectors(n), CTX)


def genius_table(n):
    """GENIUS's own identifiers (Sec. 4.2: modality `m*`, then `q{level}_*`) from a tiny quantizer trained on
    one query per item."""
    scheme = GeniusIdentifier(num_levels=3, codebook_size=3, fusion_hidden=8, epochs=1, batch_size=4,
                              modality_code="given")
    ctx = IdentifierContext(train_query_vecs=vectors(n, seed=1), train_query_items=[f"i{k}" for k in range(n)],
                            train_query_tasks=["t2i"] * n)
    return scheme.build(items(n), vectors(n), ctx)


TABLES = {
    "structured": lambda n: StructuredIdentifier(k=2, c=2).build(items(n), vectors(n), CTX),
    "atomic": lambda n: AtomicIdentifier().build(items(n), None, CTX),
    "image_tokens": lambda n: ImageTokenIdentifier(levels=2, codebook_size=3, disambiguate=True).build(
        items(n), vectors(n), CTX),
    "cart": cart_table,
    "genius": genius_table,
}


def qwen(table=None, classifier=False, **kw):
    torch.manual_seed(0)
    options = identifier_options(table, classifier) if table is not None else {}
    return retriever_class("qwen25vl")(config={}, **{"reason": "none", **options, **kw})


def llm_ids(model, table):
    return {i: [t - OFFSET for t in s] for i, s in zip(table.item_ids, model.identifier_token_ids(
        [table.text(i) for i in table.item_ids]))}


@pytest.mark.parametrize("scheme", list(TABLES))
def test_each_identifier_token_is_one_new_token(scheme):
    table = TABLES[scheme](6)
    plain, m = qwen(), qwen(table)
    n, tok = len(table.new_tokens), m.processor.tokenizer
    assert n > 0 and len(tok) == len(plain.processor.tokenizer) + n
    assert m.lm_vocab_size == plain.lm_vocab_size + n  # the LM head's width (and the embedding's) grows by n
    assert m.hf.get_input_embeddings().num_embeddings == plain.hf.get_input_embeddings().num_embeddings + n
    ids = tok.convert_tokens_to_ids([spelled(t) for t in table.new_tokens])
    assert sorted(ids) == list(range(len(plain.processor.tokenizer), len(tok)))
    for t, i in zip(table.new_tokens, ids):
        assert tok(spelled(t), add_special_tokens=False)["input_ids"] == [i]
    for item, seq in llm_ids(m, table).items():  # the identifier is its tokens, one LLM id each
        assert seq == tok.convert_tokens_to_ids([spelled(table.vocab[t]) for t in table.tokens(item)[:-1]])
    longest = max(table.new_tokens, key=len)
    assert len(plain.token_ids(longest)) > 1  # the plain tokenizer would spell it in pieces
    text = f"a caption naming {' and '.join(table.new_tokens[:3])} as words"  # ordinary text is tokenized as before
    assert m.token_ids(text) == plain.token_ids(text)
    assert m.hf(input_ids=torch.tensor([ids]), use_cache=False).logits.shape == (1, n, m.lm_vocab_size)


def test_padded_checkpoint_and_text_identifiers(mllm_checkpoint):
    """A hub-like Qwen checkpoint (LM rows padded past the tokenizer): 100 item tokens straddle the padding and
    all get rows; string and numeric IDs are the LLM's digit tokens, semantic words keep their spaces."""
    path = mllm_checkpoint("qwen25vl")
    load = lambda table: retriever_class("qwen25vl")(pretrained=str(path), reason="none", lora=None,
                                                     **identifier_options(table, False))
    plain = load(IdTable.from_lists(["x"], [[2]], ["<pad>", "</s>", "x"]))
    known, rows = len(plain.processor.tokenizer), plain.lm_vocab_size
    atomic = AtomicIdentifier().build(items(100), None, CTX)
    m = load(atomic)
    assert known < rows < known + 100 and m.lm_vocab_size == known + 100
    ids = torch.tensor([m.processor.tokenizer.convert_tokens_to_ids([spelled(t) for t in atomic.new_tokens])])
    embed = m.hf.get_input_embeddings()
    torch.testing.assert_close(embed(ids)[0], embed.rows)  # padding rows and new rows alike: the added rows
    assert m.hf(input_ids=ids, use_cache=False).logits.shape[-1] == known + 100

    for scheme in (StringIdentifier(chunk_digits=2), NumericIdentifier()):
        table = scheme.build(items(120), None, CTX)
        m = load(table)
        assert len(m.processor.tokenizer) == known and m.identifiers.number_ids
        seqs = llm_ids(m, table)
        for item in table.item_ids:
            digits = table.text(item).replace(" ", "")
            assert seqs[item] == m.token_ids(digits)
        spaced = [i for i in table.item_ids if seqs[i] != m.token_ids(table.text(i))]
        assert spaced  # with the table's spaces some would be spelled differently

    words = ["red circle", "red circle", "green star"]
    vocab = ["<pad>", "</s>", "circle", "green", "red", "star", "#0", "#1"]
    semantic = IdTable.from_lists(["a", "b", "c"], [[4, 2, 6], [4, 2, 7], [3, 5]], vocab, new_tokens=["#0", "#1"])
    m = load(semantic)
    seqs = llm_ids(m, semantic)
    assert not m.identifiers.number_ids
    assert seqs["a"] == m.token_ids(words[0]) + [m.processor.tokenizer.convert_tokens_to_ids(spelled("#0"))]
    assert seqs["c"] == m.token_ids(words[2])


@pytest.mark.parametrize("family", ["qwen25vl", "llava", "idefics"])
def test_every_family_checkpoint_takes_item_tokens(family, mllm_checkpoint):
    """Saved checkpoints as conf/backbone builds them (LoRA, gradient checkpointing): padded (Qwen, LLaVA) and
    decoupled (IDEFICS: image tokens in an additional vocabulary) layouts take the new tokens; the loss of an
    image and a text sample reaches their rows; step decoding scores them as a full forward does."""
    table = AtomicIdentifier().build(items(5), None, CTX)
    m = retriever_class(family)(pretrained=str(mllm_checkpoint(family)), reason="none", lora=LORA,
                                gradient_checkpointing=True, **identifier_options(table, False))
    tok = m.processor.tokenizer
    assert all(len(tok(spelled(t), add_special_tokens=False)["input_ids"]) == 1 for t in table.new_tokens)
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    m.train()
    m.loss(m.collate([{"image": image, "answer": table.text("i0")}, {"text": QUERIES[1], "answer": table.text("i1")}
                      ])).backward()
    fed = m.hf.get_input_embeddings().rows.grad.abs().sum(1)
    assert (fed > 0).tolist() == [True, True, False, False, False]  # the input rows of the answers' tokens
    assert (m.hf.get_output_embeddings().rows.grad.abs().sum(1) > 0).all()  # every head row: the softmax
    m.eval()
    query = [{"image": image}]
    seq = list(m.id_table(["i3"], [table.text("i3")]).tokens("i3"))
    forward = m.teacher_forced_logits(query, [seq])[0]
    sd = m.step_decoder()
    torch.testing.assert_close(m.to_decoding(sd.prepare(query).logits)[0], forward[0], atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def trained():
    """A tiny Qwen under LoRA learning six structured identifiers from their queries (memorize-free retrieve
    samples): the model, the table, the samples and the loss before and after."""
    table = TABLES["structured"](6)
    m = qwen(table, lora=LORA, lr=1e-2, warmup_steps=1)
    samples = [{"text": q, "answer": table.text(i), "instruction": "Find:"} for q, i in zip(QUERIES, table.item_ids)]
    batch, opt = m.collate(samples), m.configure_optimizers()["optimizer"]
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    rows = m.hf.get_input_embeddings().rows.detach().clone()
    m.train()
    before = m.loss(batch).item()
    for _ in range(150):
        opt.zero_grad()
        m.loss(batch).backward()
        opt.step()
    m.eval()
    return SimpleNamespace(model=m, table=table, samples=samples, before=before, after=m.loss(batch).item(),
                           frozen=frozen, rows=rows)


def test_lora_trains_the_new_rows_and_lowers_the_loss(trained):
    m = trained.model
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert {n for n in trainable if ".lora_" not in n} == {"hf.model.language_model.embed_tokens.rows",
                                                           "hf.lm_head.rows"}
    assert trained.after < 0.5 * trained.before
    assert not torch.equal(m.hf.get_input_embeddings().rows, trained.rows)
    for n, p in m.named_parameters():  # the pretrained weights stay as they were
        if n in trained.frozen:
            assert torch.equal(p, trained.frozen[n]), n


def test_constrained_search_returns_pool_identifiers(trained):
    m, table = trained.model, trained.table
    llm = m.id_table(table.item_ids, [table.text(i) for i in table.item_ids])
    pool = llm.subset(table.item_ids[:4])
    queries = [{"text": q, "instruction": "Find:"} for q in QUERIES[:4]]
    rankings, _ = constrained_beam_search(m, queries, CSRTrie.from_table(pool), pool, num_beams=4, top_k=4)
    assert all(r and set(r) <= set(pool.item_ids) for r in rankings)
    assert retrieval_metrics(rankings, [[i] for i in pool.item_ids])["R@1"] == 1.0


def test_save_and_reload_keeps_the_vocabulary(trained, tmp_path):
    """As the train stage does: the state dict saved, a model rebuilt for the same IdTable loads it back."""
    m, table = trained.model, trained.table
    torch.save(m.state_dict(), tmp_path / "model.pt")
    again = qwen(table, lora=LORA)
    again.load_state_dict(torch.load(tmp_path / "model.pt"))
    again.eval()
    assert llm_ids(again, table) == llm_ids(m, table)
    q = [{"text": QUERIES[0], "instruction": "Find:"}]
    torch.testing.assert_close(again.step_decoder().prepare(q).logits, m.step_decoder().prepare(q).logits)
    with pytest.raises(RuntimeError, match="rows"):
        qwen(lora=LORA).load_state_dict(torch.load(tmp_path / "model.pt"))  # no identifier tokens: no rows


def test_atomic_classifier_head_ranks_the_items():
    table = TABLES["atomic"](5)
    m = qwen(table, classifier=True, lr=1e-2, warmup_steps=1)
    ids = m.processor.tokenizer.convert_tokens_to_ids([spelled(t) for t in table.new_tokens])
    samples = [{"text": q, "answer": table.text(i)} for q, i in zip(QUERIES, table.item_ids)]
    assert [m.answer_ids(s) for s in samples] == [[i] for i in ids]  # the item's token alone, no terminator
    batch, opt = m.collate(samples), m.configure_optimizers()["optimizer"]
    logits = m(batch)[:, -2]  # the prompt's last position
    expected = torch.nn.functional.cross_entropy(logits[:, ids], torch.arange(5))
    torch.testing.assert_close(m.loss(batch), expected)  # a classifier over the items only
    before = expected.item()
    assert before == pytest.approx(np.log(5))  # the item rows start equal (the mean of the pretrained rows)
    for _ in range(60):
        opt.zero_grad()
        m.loss(batch).backward()
        opt.step()
    assert m.loss(batch).item() < 0.1 * before
    m.eval()
    pool = m.id_table(table.item_ids, [table.text(i) for i in table.item_ids])
    rankings, _ = classifier_search(m, [{"text": q} for q in QUERIES[:5]], pool, top_k=5)
    assert all(sorted(r) == sorted(table.item_ids) for r in rankings)  # one logit per item
    assert retrieval_metrics(rankings, [[i] for i in table.item_ids])["R@1"] == 1.0
    with pytest.raises(GenretrError, match="train.reason=none"):
        qwen(table, classifier=True, reason="both")


@pytest.mark.parametrize("identifier", [
    ["identifier=structured"],
    pytest.param(["identifier=atomic", "identifier.head=classifier"], marks=pytest.mark.slow)],
    ids=["structured", "atomic_classifier"])
def test_identifier_tokens_end_to_end_on_a_tiny_qwen(identifier, make_cfg, tmp_path):
    from genretr.pipeline import Pipeline

    cfg = make_cfg(*identifier, "backbone=qwen25vl", "eval.max_queries=8", "decoding.num_beams=3",
                   "backbone.fit.max_epochs=1")
    p = Pipeline(cfg, tmp_path / "run")
    assert 0.0 <= p.run()["t2i"]["R@10"] <= 1.0
    ds = p.dataset()
    emb = p.encode(ds)
    table = p.identify(ds, emb)
    model = p.train(ds, emb, table)  # the trained model, loaded back from the train stage's artifact
    tok = model.processor.tokenizer
    assert len(table.new_tokens) > 10
    for t in table.new_tokens:
        assert len(tok(spelled(t), add_special_tokens=False)["input_ids"]) == 1
    llm = p.decoding_table(model, table)
    assert all(len(llm.tokens(i)) == len(table.tokens(i)) for i in table.item_ids)  # one LLM token per ID token
