"""genretr.evaluation.search: free generation, GENIUS_R re-ranking and the atomic classifier head."""
import torch
from omegaconf import OmegaConf

from genretr.backbones.t5_prefix import T5PrefixDecoder
from genretr.decoding.csr_trie import CSRTrie
from genretr.decoding.engine import MISS, BeamResult, beam_search, rank_items
from genretr.evaluation.metrics import first_hit_ranks
from genretr.evaluation.search import (FreeGeneration, Rerank, classifier_search, embedding_searcher,
                                       generative_searcher)
from genretr.identifiers.base import EOS, IdTable

DEC = OmegaConf.create({"engine": "genretr", "num_beams": 4, "batch_size": 8, "length_penalty": 0.0,
                        "constrained": True})


def setup(seed=0, V=8):
    torch.manual_seed(seed)
    m = T5PrefixDecoder(vocab_size=V, input_dim=4, d_model=16, num_layers=1, num_heads=2, d_ff=32, dropout=0.0,
                        prefix_len=2, prefix_hidden=8).eval()
    table = IdTable.from_lists(["a", "b", "c"], [[2, 3], [3, 4], [5]], ["<pad>", "</s>"] + [f"t{k}" for k in range(2, V)])
    return m, table, CSRTrie.from_table(table), torch.randn(6, 4)


def test_free_generation_never_invents_items():
    m, table, trie, z = setup()
    free = generative_searcher(m, trie, table, DEC, 4, False, add_ons=[FreeGeneration()])
    rankings, _ = free(z)
    assert all(set(r) <= {"a", "b", "c", MISS} for r in rankings)
    constrained, _ = generative_searcher(m, trie, table, DEC, 4, False)(z)
    assert all(len(r) == 3 for r in constrained)  # every beam is a pool identifier
    assert any(MISS in r for r in rankings)  # this random decoder writes sequences that are no identifier


def test_free_generation_ranks_every_beam_as_generated():
    """GRACE Sec. 4.3: without the trie, a beam that is no pool identifier is the model's answer at its rank, a
    miss there; the identifiers below it keep their ranks (a skip would move them up and count R@1 hits that
    the model did not rank first)."""
    m, table, trie, z = setup()
    result = beam_search(m, z, None, 4, max_len=trie.max_len)
    rankings, _ = generative_searcher(m, trie, table, DEC, 4, False, add_ons=[FreeGeneration()])(z)
    for q, ranked in enumerate(rankings):
        beams = [result.tokens[q, b, : result.lengths[q, b]].tolist() for b in range(4)
                 if result.scores[q, b] > float("-inf")]
        assert ranked == [(table.items_of(seq) or [MISS])[0] for seq in beams]  # one item per identifier here
    # beams by hand: no identifier, then c (relevant), then a -- c is the answer at rank 2, not 1
    seqs = [[4, 4, EOS], list(table.tokens("c")), list(table.tokens("a"))]
    tokens = torch.zeros(1, 3, 3, dtype=torch.long)
    for b, seq in enumerate(seqs):
        tokens[0, b, : len(seq)] = torch.tensor(seq)
    beams = BeamResult(tokens, torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[len(x) for x in seqs]]),
                       torch.full((1, 3), -1))
    held, scores = rank_items(beams, table, None, 10, misses=True)
    assert held == [[MISS, "c", "a"]] and scores == [[-1.0, -2.0, -3.0]]
    repeat = BeamResult(beams.tokens[:, [1, 1, 2]], beams.scores, beams.lengths[:, [1, 1, 2]], beams.nodes)
    assert rank_items(repeat, table, None, 10, misses=True)[0] == [["c", MISS, "a"]]  # a repeat adds no item
    assert first_hit_ranks(held, [("c",)]).tolist() == [2]
    skipped, _ = rank_items(beams, table, None, 10)  # misses dropped: what a constrained search's table lookup does
    assert skipped == [["c", "a"]] and first_hit_ranks(skipped, [("c",)]).tolist() == [1]


def test_rerank_orders_beam_items_by_cosine():
    m, table, trie, z = setup()
    vecs = {"a": torch.tensor([1.0, 0, 0, 0]), "b": torch.tensor([0, 1.0, 0, 0]), "c": torch.tensor([0, 0, 1.0, 0])}
    lookup = lambda ids: torch.stack([vecs[i] for i in ids])
    q = torch.tensor([[0.0, 0.2, 1.0, 0.0]] * 2)
    rankings, _ = generative_searcher(m, trie, table, DEC, 2, False, add_ons=[Rerank(lookup)])(q)
    assert rankings == [["c", "b"], ["c", "b"]]


def test_rerank_sorts_the_items_a_free_generation_found_without_its_misses():
    vecs = {"a": torch.tensor([1.0, 0, 0, 0]), "b": torch.tensor([0, 1.0, 0, 0])}
    rerank = Rerank(lambda ids: torch.stack([vecs[i] for i in ids]))
    q = torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert rerank.rankings([[MISS, "a", MISS, "b"], [MISS, MISS]], q, 10) == [["b", "a"], []]


def test_classifier_head_ranks_pool_tokens_by_first_step_logit():
    m, table, trie, z = setup()
    atomic = IdTable.from_lists(["a", "b", "c"], [[5], [2], [7]], ["<pad>", "</s>"] + [f"t{k}" for k in range(2, 8)])
    rankings, _ = classifier_search(m, z, atomic, top_k=3)
    with torch.no_grad():
        logits = m.t5(encoder_outputs=m.encoder_outputs(z), decoder_input_ids=torch.zeros(6, 1, dtype=torch.long)).logits[:, 0]
    for r, row in zip(rankings, logits):
        order = sorted(["a", "b", "c"], key=lambda i: -float(row[{"a": 5, "b": 2, "c": 7}[i]]))
        assert r == order


def test_embedding_searcher_reads_vectors_from_dict_queries():
    pool = torch.eye(3)
    search = embedding_searcher(["x", "y", "z"], pool.numpy(), 2)
    r1, _ = search(torch.tensor([[0.0, 1.0, 0.1]]))
    r2, _ = search({"z": torch.tensor([[0.0, 1.0, 0.1]]), "src": torch.zeros(1, 3, dtype=torch.long)})
    assert r1 == r2 == [["y", "z"]]


def test_a_search_add_on_its_engine_cannot_run_is_one_line():
    import pytest

    from genretr.errors import GenretrError
    from genretr.evaluation.search import ReasonAfterIdentifier

    m, table, trie, z = setup()
    hf = OmegaConf.merge(DEC, {"engine": "hf"})
    for add_on, option in [(FreeGeneration(), "decoding.constrained=false"), (ReasonAfterIdentifier(7), "train.reason=both")]:
        with pytest.raises(GenretrError, match=f"^{option} is decoded by decoding.engine=genretr only$"):
            generative_searcher(m, trie, table, hf, 4, False, add_ons=[add_on])


def test_search_add_ons_are_built_in_order_from_the_run(make_cfg):
    from genretr.evaluation.search import ReasonAfterIdentifier
    from genretr.pipeline import Pipeline
    from genretr.stages.evaluate import search_add_ons

    p = Pipeline(make_cfg("decoding.constrained=false", "decoding.rerank=true"), "unused")
    table = IdTable.from_lists(["a"], [[2]], ["<pad>", "</s>", "x"], reasons={"a": "round red"})
    emb = type("Emb", (), {"items": staticmethod(lambda ids: torch.zeros(len(ids), 2))})()
    added = search_add_ons(p.ctx, None, emb, table)
    assert [type(a) for a in added] == [ReasonAfterIdentifier, FreeGeneration, Rerank]
    assert added[0].sep == table.vocab_size  # <reason> is the first word after the identifiers
