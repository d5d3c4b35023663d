"""Pipeline options beyond the default run: token input, pseudo-queries, phased training, free
generation, GENIUS_R re-ranking, the atomic classifier head."""
import json
import logging

import pytest

from genretr.decoding.engine import MISS
from genretr.pipeline import Pipeline


def run(cfg, tmp_path):
    return Pipeline(cfg, tmp_path / "run").run()["t2i"]


def test_tokens_input_with_pseudo_queries_and_phases(make_cfg, tmp_path):
    cfg = make_cfg("backbone.input=tokens", "train.pseudo_queries=true", "train.schedule=phased",
                   "train.memorize_epochs=1", "captioner.fit.max_epochs=5")
    m = run(cfg, tmp_path)
    assert m["queries"] == 100 and m["R@1"] > 0
    written = list((tmp_path / "cache").glob("captions/*/artifact/captions.json"))
    assert len(written) == 1
    captions = json.loads(written[0].read_text())
    assert len(captions) == 20 and all(captions.values())  # the 20 test images (no train query), none empty


def test_free_generation_and_rerank_reuse_the_trained_model(make_cfg, tmp_path):
    import numpy as np

    base = run(make_cfg(), tmp_path)
    free = run(make_cfg("decoding.constrained=false"), tmp_path)
    reranked = run(make_cfg("decoding.rerank=true"), tmp_path)
    assert free["R@10"] <= base["R@10"]
    assert len(list((tmp_path / "cache").glob("train/*/artifact/model.pt"))) == 1  # one model serves all three
    # GENIUS_R (Sec. 4.4): the beams' items, re-sorted by cosine(query vector, item vector), computed here apart
    p = Pipeline(make_cfg(), tmp_path / "run")
    ds, queries, beams = p.task_rankings("t2i")
    p.cfg.decoding.rerank = True
    _, _, resorted = p.task_rankings("t2i")
    emb = p.encode(ds)
    for q, b, r in zip(queries, beams, resorted):
        qv, iv = emb.queries([q.id]).numpy()[0], emb.items(b).numpy()
        cos = dict(zip(b, iv @ qv / (np.linalg.norm(iv, axis=1) * np.linalg.norm(qv))))
        assert set(r) <= set(b) and len(r) == min(len(b), 10)
        assert all(cos[x] >= cos[y] - 1e-6 for x, y in zip(r, r[1:]))  # by cosine, best first (ties aside)
        assert all(cos[x] <= cos[r[-1]] + 1e-6 for x in set(b) - set(r))  # the cut keeps the best
    assert sum(r != b for b, r in zip(beams, resorted)) >= len(queries) // 4  # it reorders, not only keeps
    assert reranked["R@1"] == sum(r[0] in q.relevant for q, r in zip(queries, resorted)) / len(queries)


def test_genius_decoder_reads_the_fused_space_and_reranks_in_the_encoders(make_cfg, tmp_path):
    """GENIUS Eq. 9: the decoder reads the quantizer's fused z = h(0, text) / ||h|| for a caption query; GENIUS_R
    re-ranks by the encoder's cosine (the authors' CLIP-SF vectors); decoder_input=encoder keeps the encoder's."""
    import numpy as np
    import torch

    from genretr.identifiers.genius import load_quantizer

    p = Pipeline(make_cfg("identifier=genius", "decoding.rerank=true"), tmp_path / "run")
    ds, queries, resorted = p.task_rankings("t2i")
    emb = p.encode(ds)
    inputs = p.ctx.queries_of(ds, emb, queries)
    encoder_z = emb.queries([q.id for q in queries])
    assert torch.equal(inputs["encoder_z"], encoder_z)
    quantizer, _ = load_quantizer(p.store.artifact("identify", p.keys["identify"]))
    with torch.no_grad():
        fused = torch.nn.functional.normalize(quantizer.fusion(torch.zeros_like(encoder_z), encoder_z))
    assert torch.allclose(inputs["z"], fused, atol=1e-5)
    assert not torch.allclose(inputs["z"], encoder_z, atol=1e-2)
    for q, r in zip(queries, resorted):
        qv, iv = emb.queries([q.id]).numpy()[0], emb.items(r).numpy()
        cos = iv @ qv / (np.linalg.norm(iv, axis=1) * np.linalg.norm(qv))
        assert all(cos[:-1] >= cos[1:] - 1e-6)  # by the encoder's cosine, best first (ties aside)
    # training read the fused space too (Eq. 11 mixes there): a retrieve sample's input is its query's fused z
    table = p.identify(ds, emb)
    model = p.train(ds, emb, table)
    dm, _ = p.ctx.decoder().training(p.ctx, ds, emb, table, model)
    samples = dm.data.tensors
    train_q = [q for q in ds.splits["train"].queries if q.task == "t2i"][:5]
    with torch.no_grad():
        v = emb.queries([q.id for q in train_q])
        want = torch.nn.functional.normalize(quantizer.fusion(torch.zeros_like(v), v))
    assert all(torch.isclose(samples["z"], w, atol=1e-5).all(1).any() for w in want)
    assert torch.allclose(samples["target_z"].norm(dim=1), torch.ones(len(samples["target_z"])), atol=1e-5)
    # HF's generate reads the same dict of query inputs (decoding.engine=hf)
    p.cfg.decoding.rerank, p.cfg.decoding.engine = False, "hf"
    _, _, by_hf = p.task_rankings("t2i")
    p.cfg.decoding.engine = "genretr"
    _, _, by_engine = p.task_rankings("t2i")
    assert sum(a[:1] == b[:1] for a, b in zip(by_hf, by_engine)) >= 0.8 * len(queries)
    encoder = Pipeline(make_cfg("identifier=genius", "identifier.decoder_input=encoder"), tmp_path / "run")
    encoder.task_rankings("t2i")
    assert torch.equal(encoder.ctx.queries_of(ds, emb, queries), encoder_z)
    assert encoder.keys["identify"] == p.keys["identify"]  # one set of identifiers, two decoders
    assert encoder.keys["train"] != p.keys["train"]


def test_atomic_classifier_head(make_cfg, tmp_path):
    m = run(make_cfg("identifier=atomic", "identifier.head=classifier"), tmp_path)
    assert m["queries"] == 100 and m["R@10"] > 0


def _write_features(root, n=24, d=8, seed=0):
    """Precomputed 'audio' vectors in the documented layout: 16 train clips and 8 test clips, 2 captions each."""
    import numpy as np

    rng = np.random.default_rng(seed)
    np.save(root / "features.npy", rng.normal(size=(n, d)).astype(np.float32))
    (root / "ids.txt").write_text("".join(f"clip{k}.wav\n" for k in range(n)))
    words = ["dog", "rain", "train", "bird", "car", "bell", "wind", "crowd"]
    lines = [{"item_id": f"clip{k}.wav", "caption": f"a {words[k % 8]} sound number {k} {v}",
              "split": "train" if k < 16 else "test"} for k in range(n) for v in ("loud", "soft")]
    (root / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def test_precomputed_audio_features_with_a_token_input_decoder(make_cfg, tmp_path):
    root = _write_features(tmp_path)
    common = ["dataset=precomputed", f"dataset.features={root}/features.npy", f"dataset.ids={root}/ids.txt",
              f"dataset.captions={root}/captions.jsonl", "eval.tasks=[t2a]"]
    p = Pipeline(make_cfg(*common, "backbone.input=tokens"), tmp_path / "run")
    m = p.run()["t2a"]
    assert m["queries"] == 16 and m["R@1"] > 0
    import numpy as np

    given = np.load(root / "features.npy")  # the item vectors are the file's rows, in ids.txt's order, unit length
    vecs = p.encode(p.dataset()).items([f"clip{k}.wav" for k in range(len(given))]).numpy()
    assert np.allclose(vecs, given / np.linalg.norm(given, axis=1, keepdims=True), atol=1e-6)
    import pytest

    from genretr.errors import GenretrError
    with pytest.raises(GenretrError, match="no query vectors"):  # prefix mode reads query vectors: none given
        Pipeline(make_cfg(*common, run="other"), tmp_path / "other").run()


def test_universal_pool(make_cfg, tmp_path):
    cfg = make_cfg("method=embedding", "dataset.universal=true", "eval.pool=universal", "eval.tasks=[t2i,i2t]")
    m = Pipeline(cfg, tmp_path / "run").run()
    task = Pipeline(make_cfg("method=embedding", "dataset.universal=true", "eval.tasks=[t2i,i2t]", run="t"),
                    tmp_path / "t").run()
    assert m["t2i"]["R@1"] <= task["t2i"]["R@1"] + 1e-9  # a larger pool can only make ranking harder


def test_cart_backbone_with_caption_enhancement(make_cfg, tmp_path, caplog):
    """CART Sec. 3.3: a captioner-written query for every item joins the train queries as a retrieve sample; the
    captioner is part of the train key (another captioner, another model)."""
    common = ["backbone=cart", "train.memorize=false", "train.pseudo_queries=true", "train.pseudo_queries_for=all"]
    with caplog.at_level(logging.INFO, logger="genretr.stages.decoders.sequence"):
        p = Pipeline(make_cfg(*common, "captioner.fit.max_epochs=5"), tmp_path / "run")
        m = p.run()["t2i"]
    ds = p.dataset()
    written = json.loads(next((tmp_path / "cache").glob("captions/*/artifact/captions.json")).read_text())
    items = {i for s in ("train", "test") for i in ds.splits[s].pools["t2i"]}
    assert set(written) == items and all(written.values())  # every item captioned, no caption empty
    counts = [int(r.getMessage().split()[1]) for r in caplog.records if "training samples" in r.getMessage()]
    assert counts == [len(ds.queries("train", "t2i")) + len(items)]  # the train queries and one per item
    assert m["queries"] == 100
    Pipeline(make_cfg(*common, "captioner.fit.max_epochs=4", run="other"), tmp_path / "other").run()
    assert len(list((tmp_path / "cache").glob("train/*/artifact/model.pt"))) == 2


def test_ssid_identifiers_from_the_keywords_generator(make_cfg, tmp_path):
    m = run(make_cfg("identifier=ssid"), tmp_path)
    assert m["queries"] == 100 and m["R@10"] > 0
    summary = json.loads(next((tmp_path / "cache").glob("identify/*/artifact/ssid_summary.json")).read_text())
    assert sum(summary["outcomes"].values()) == 80  # 60 train + 20 test images, each written once


@pytest.mark.slow  # each MLLM family's code path runs end to end in tests/backbones/test_mllm.py (CI)
def test_mllm_backbone_end_to_end_on_a_tiny_random_qwen(make_cfg, tmp_path):
    cfg = make_cfg("identifier=ssid", "backbone=qwen25vl", "eval.max_queries=8", "decoding.num_beams=3",
                   "backbone.fit.max_epochs=1", "train.memorize_repeat=1")
    m = run(cfg, tmp_path)
    assert m["queries"] == 8 and 0.0 <= m["R@10"] <= 1.0


def test_describe_memorized_images_by_identifier(make_cfg, tmp_path):
    cfg = make_cfg("backbone.input=tokens", "train.describe=true", "identifier=structured")
    out = Pipeline(cfg, tmp_path / "run").run()
    d = out["describe"]
    assert d["queries"] == 20 and 0.0 <= d["R@1"] <= d["R@5"] <= 1.0
    lines = (tmp_path / "run" / "descriptions.tsv").read_text().splitlines()
    assert len(lines) == 20 and all("<id:" not in line for line in lines)
    from genretr.describe import id_word

    p = Pipeline(cfg, tmp_path / "run")  # the prompt's ID words read the decoder's embedding of their token
    ds = p.dataset()
    emb = p.encode(ds)
    table = p.identify(ds, emb)
    model, vocab = p.train(ds, emb, table), p.ctx.query_vocab(ds, table)
    assert all(int(model.src_targets[vocab.index[id_word(t)]]) == k for k, t in enumerate(table.vocab) if k >= 2)
    import pytest

    from genretr.errors import GenretrError
    with pytest.raises(GenretrError, match="backbone.input=tokens"):
        Pipeline(make_cfg("train.describe=true", run="prefix"), tmp_path / "prefix").run()


def test_only_pool_items_are_returned_even_with_shared_identifiers(make_cfg, tmp_path):
    """Semantic IDs collide across train and test images (identical captions); the train item behind a
    shared identifier must never be returned for a test query, constrained or free."""
    from genretr.identifiers.base import IdTable

    p = Pipeline(make_cfg("identifier=semantic", "identifier.train_caption=generated"), tmp_path / "run")
    ds = p.dataset()
    emb = p.encode(ds)
    table = p.identify(ds, emb)
    pool = set(ds.splits["test"].pools["t2i"])
    # force collisions: for every test item, a train item takes its identifier
    train_items = [i for i in table.item_ids if i not in pool]
    seqs = table.sequences.copy()
    for tr, te in zip(train_items, sorted(pool)):
        seqs[table.item_ids.index(tr)] = seqs[table.item_ids.index(te)]
    table = IdTable(table.item_ids, seqs, table.vocab)
    assert table.collisions() >= 2 * len(pool)
    model, tries = p.train(ds, emb, table), p.index(ds, table)
    queries = ds.queries("test", "t2i")
    for constrained in ("true", "false"):
        p.cfg.decoding.constrained = constrained == "true"
        rankings, _ = p.searcher(ds, emb, "t2i", model, table, tries)(emb.queries([q.id for q in queries]))
        assert all(set(r) - {MISS} <= pool for r in rankings)  # free generation: other beams are misses (None)
