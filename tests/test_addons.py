"""The paper add-ons as components (genretr.stages.addons): built in one place from the config, their output
words placed after the identifiers in order, refused in one line by a decoder that cannot take them."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from genretr.errors import GenretrError
from genretr.identifiers.base import IdTable
from genretr.stages.addons import (AddOn, AddOns, Describe, PseudoQueries, Rationale, SampleLimit, TranslatedQueries,
                                   add_ons)
from genretr.validate import validate


def cfg(**train):
    return OmegaConf.create({"seed": 3, "method": {"name": "generative"}, "eval": {"query_texts": None},
                             "train": {"pseudo_queries": False, "describe": False, "limit": None, **train}})


def test_the_list_follows_the_config_in_sample_order():
    assert [type(a) for a in add_ons(cfg())] == [Rationale]
    every = add_ons(cfg(pseudo_queries=True, pseudo_queries_for="all", describe=True, limit=7, reason="both"))
    assert [type(a) for a in every] == [PseudoQueries, Describe, Rationale, SampleLimit]
    assert every[0].every_item and every[2].mode == "both" and (every[3].n, every[3].seed) == (7, 3)
    with_texts = cfg()
    with_texts.eval.query_texts = "q.tsv"
    assert isinstance(add_ons(with_texts)[-1], TranslatedQueries)


class Words(AddOn):
    def __init__(self, n):
        self.n = n

    def output_words(self, ctx, ds, table):
        return self.n

    def sample_options(self, ctx, ds, emb, table, offset):
        return {f"at{self.n}": offset}


def test_output_words_follow_the_identifiers_in_list_order():
    table = IdTable.from_lists(["a", "b"], [[2], [3]], ["<pad>", "</s>", "x", "y"])
    addons = AddOns([Words(5), Words(0), Words(2)])
    assert addons.offsets(None, None, table) == [4, 9, 9]
    assert addons.output_words(None, None, table) == 7
    assert addons.sample_options(None, None, None, table) == {"at5": 4, "at0": 9, "at2": 9}


def test_the_sample_limit_draws_the_same_rows_from_tensors_and_lists():
    limit = SampleLimit(3, seed=1)
    rows = limit.extend(None, None, None, None, list(range(10)), None, 0)
    tensors = limit.extend(None, None, None, None, {"labels": torch.arange(10)}, None, 0)
    assert len(rows) == 3 and rows == sorted(rows) and tensors["labels"].tolist() == rows


def test_rationale_engages_before_identify_only_when_asked():
    assert Rationale("both").engaged(None, None) and Rationale("train_only").engaged(None, None)
    assert not Rationale("auto").engaged(None, None) and not Rationale("none").engaged(None, None)


@pytest.mark.parametrize("overrides, message", [
    (["backbone=t5", "train.describe=true"], r"train.describe=true \(describe\) is not taken by SequenceDecoder "
                                             r"\(backbone.adapter\): it needs a token-input backbone"),
    (["backbone=qwen25vl", "train.pseudo_queries=true"], r"train.pseudo_queries=true \(pseudo_queries\) is not "
                                                         r"taken by MLLMDecoder"),
])
def test_a_decoder_refuses_an_add_on_it_cannot_take_before_any_stage(make_cfg, overrides, message):
    with pytest.raises(GenretrError, match=message):
        validate(make_cfg(*overrides))


def test_decoders_take_what_they_implement(make_cfg):
    validate(make_cfg("backbone=t5", "backbone.input=tokens", "train.describe=true", "train.pseudo_queries=true"))
    validate(make_cfg("backbone=qwen25vl", "train.limit=4", "train.reason=both"))
