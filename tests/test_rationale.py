"""SSID's rationale-guided supervision on the word-level decoders (genretr.rationale)."""
import pytest
import torch

from genretr.backbones.t5_prefix import T5PrefixDecoder
from genretr.decoding.csr_trie import CSRTrie
from genretr.decoding.engine import constrained_beam_search
from genretr.errors import GenretrError
from genretr.identifiers.base import EOS, IdTable
from genretr.pipeline import Pipeline
from genretr.rationale import AnswerWithReason, ReasonVocab, resolve

REASONS = {"a": "red circle here", "b": "a blue square", "c": "red square"}


def _table():
    vocab = ["<pad>", "</s>", "red", "blue", "circle", "square"]
    return IdTable.from_lists(["a", "b", "c"], [[2, 4], [3, 5], [2, 5]], vocab)


def test_resolve_modes():
    assert resolve("auto", REASONS) == "both" and resolve("auto", {}) == "none"
    assert resolve("train_only", REASONS) == "train_only"
    with pytest.raises(GenretrError, match="needs rationales"):
        resolve("both", {})
    with pytest.raises(GenretrError, match="train.reason=maybe"):
        resolve("maybe", REASONS)


def test_answers_are_identifier_then_reason_token_then_rationale_words():
    table = _table()
    rv = ReasonVocab(REASONS, offset=table.vocab_size)
    assert rv.sep == 6 and rv.words == ["a", "blue", "circle", "here", "red", "square"] and len(rv) == 7
    ans = rv.answers(table)
    assert ans["a"] == [2, 4, 6, rv.index["red"], rv.index["circle"], rv.index["here"], EOS]
    with pytest.raises(GenretrError, match="item c has none"):
        ReasonVocab({"a": "x", "b": "y"}, 6).answers(table)


def _decoder(vocab_size):
    torch.manual_seed(0)
    return T5PrefixDecoder(vocab_size=vocab_size, input_dim=8, d_model=16, num_layers=1, num_heads=2, d_ff=32,
                           prefix_len=2).eval()


def test_answer_with_reason_scores_identifiers_ended_by_the_reason_token():
    table = _table()
    sep = table.vocab_size
    model = _decoder(sep + 4)
    z = torch.randn(2, 8)
    rankings, scores, _ = constrained_beam_search(AnswerWithReason(model, sep), z, CSRTrie.from_table(table), table,
                                                  num_beams=3, top_k=3, return_scores=True)
    plain, _, _ = constrained_beam_search(model, z, CSRTrie.from_table(table), table, num_beams=3, top_k=3,
                                          return_scores=True)
    # teacher forcing: log p(identifier tokens, <reason>) of each item
    tf = {}
    with torch.no_grad():
        for item in table.item_ids:
            labels = torch.tensor([list(table.tokens(item)[:-1]) + [sep]] * len(z))
            logp = model._t5(z, labels=labels).logits.log_softmax(-1)
            tf[item] = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(1)
    for q in range(len(z)):
        assert rankings[q] == sorted(table.item_ids, key=lambda i: -float(tf[i][q]))
        for item, score in zip(rankings[q], scores[q]):
            assert abs(float(score) - float(tf[item][q])) < 1e-4
    assert scores != plain or rankings != plain  # ended by </s>, the same identifiers score otherwise


def test_ssid_on_t5_trains_the_rationale_and_train_only_shares_the_model(make_cfg, tmp_path):
    both = Pipeline(make_cfg("identifier=ssid"), tmp_path / "both")
    m_both = both.run()["t2i"]
    ds = both.dataset()
    table = both.identify(ds, both.encode(ds))
    assert both.ctx.reason(table) == "both"
    rv = both.ctx.reason_vocab(ds, table)
    assert rv is not None and len(rv.words) > 3
    only = Pipeline(make_cfg("identifier=ssid", "train.reason=train_only", run="only"), tmp_path / "only")
    m_only = only.run()["t2i"]
    assert only.keys["train"] == both.keys["train"]  # trained alike: one model
    none = Pipeline(make_cfg("identifier=ssid", "train.reason=none", run="none"), tmp_path / "none")
    none.run()
    assert none.keys["train"] != both.keys["train"]
    assert m_both["queries"] == m_only["queries"] == 100
    assert len(list((tmp_path / "cache").glob("train/*/artifact/model.pt"))) == 2
    # a scheme without rationales: auto is none, and asking for one is a clear error
    with pytest.raises(GenretrError, match="needs rationales"):
        Pipeline(make_cfg("train.reason=both", run="str"), tmp_path / "str").run()


def test_few_shot_limit_trains_on_n_samples_and_zero_is_the_untrained_decoder(make_cfg, tmp_path):
    """SSID Fig. 3: fine-tune on N retrieve samples, test identifiers never memorized."""
    keys = []
    for n in (0, 20):
        p = Pipeline(make_cfg("identifier=ssid", "train.memorize=false", f"train.limit={n}", run=f"n{n}"),
                     tmp_path / f"n{n}")
        m = p.run()["t2i"]
        assert m["queries"] == 100
        keys.append(p.keys["train"])
    assert keys[0] != keys[1]
    with pytest.raises(GenretrError, match="train.limit=-1"):
        Pipeline(make_cfg("identifier=ssid", "train.limit=-1", run="neg"), tmp_path / "neg").run()
