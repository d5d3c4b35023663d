"""genretr.evaluation.scoring: a retrieved item's score, teacher-forced, equals the score the constrained beam
search gave it (T5 prefix decoder with and without a length penalty, CART's seq2seq), and cosines."""
import pytest
import torch

from genretr.decoding.csr_trie import CSRTrie
from genretr.decoding.engine import constrained_beam_search
from genretr.evaluation.scoring import cosine_scores, identifier_scores
from tests.backbones.test_cart_backbone import random_src, tiny
from tests.backbones.test_cart_backbone import random_table as cart_table
from tests.decoding.test_engine import decoder, random_table


@pytest.mark.parametrize("name,lp", [("variable-shared", 0.0), ("variable-wide", 1.0), ("duplicates", 0.5)])
def test_t5_prefix_scores_equal_the_beam_scores(name, lp):
    table = random_table(name)
    model = decoder(3, table.vocab_size)
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(5))
    ranked, scores, _ = constrained_beam_search(model, z, CSRTrie.from_table(table), table, 8, top_k=8,
                                                length_penalty=lp, return_scores=True)
    for q in range(len(z)):
        rows = table.sequences[[table.item_ids.index(i) for i in ranked[q]]]
        ours = identifier_scores(model, z[q:q + 1], rows, length_penalty=lp)
        assert ours == pytest.approx(scores[q], abs=1e-4)
        assert len(set(ours)) > 1  # a real spread, not one constant


def test_cart_scores_equal_the_beam_scores():
    m, table = tiny().eval(), cart_table()
    src = random_src(3)
    ranked, scores, _ = constrained_beam_search(m, {"src": src}, CSRTrie.from_table(table), table, num_beams=6,
                                                top_k=6, return_scores=True)
    for q in range(len(src)):
        rows = table.sequences[[table.item_ids.index(i) for i in ranked[q]]]
        assert identifier_scores(m, {"src": src[q:q + 1]}, rows) == pytest.approx(scores[q], abs=1e-4)


def test_one_query_only_and_cosines():
    table = random_table("fixed-wide")
    with pytest.raises(ValueError, match="one query"):
        identifier_scores(decoder(0, table.vocab_size), torch.zeros(2, 8), table.sequences[:2])
    assert cosine_scores(torch.tensor([1.0, 0.0]), torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])) == \
        pytest.approx([1.0, 0.0, -1.0])
