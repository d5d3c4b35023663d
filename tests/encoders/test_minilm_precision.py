"""MiniLM text features under genretr's precision option: bf16 autocast where the CPU has bf16, its own cache key."""
import pytest
import torch

from genretr.encoders.towers import MiniLMText
from genretr.hardware import cpu_bf16_kind

TEXTS = ["a red circle left of a blue square", "two green triangles", "a small yellow star above a big circle"]


def test_fp32_and_bf16_features_are_cached_apart():
    assert MiniLMText(precision="fp32").preparation_id() != MiniLMText(precision="bf16").preparation_id()
    assert MiniLMText(precision="fp32").feature_dtype() == torch.float32
    assert MiniLMText(precision="bf16").feature_dtype() == torch.bfloat16
    auto = MiniLMText(precision="auto").feature_dtype()
    assert auto == (torch.bfloat16 if cpu_bf16_kind() else torch.float32)


def test_bad_precision_is_refused():
    with pytest.raises(ValueError, match="precision=half"):
        MiniLMText(precision="half").feature_dtype()


def test_bf16_features_match_fp32():
    torch.set_num_threads(1)
    a, b = MiniLMText(precision="fp32").prepare(TEXTS), MiniLMText(precision="bf16").prepare(TEXTS)
    assert a.dtype == b.dtype == torch.float32
    cos = (a * b).sum(1)
    assert cos.min() > 0.999, cos  # shapes' 14,006 captions: min 0.99991, mean 0.99996 (bf16 weights)
    assert not torch.equal(a, b)  # bf16 really ran


def test_a_long_text_is_cut_where_sentence_transformers_cuts_it():
    """all-MiniLM-L6-v2's sentence_bert_config.json keeps 256 word pieces (128 before: two M-BEIR passages that
    differ only after their 128th piece got the same vector)."""
    assert MiniLMText.max_seq_length() == 256
    head = "a " * 150  # 150 word pieces
    a, b = MiniLMText(precision="fp32").prepare([head + "red circle", head + "blue square"])
    assert not torch.allclose(a, b)
