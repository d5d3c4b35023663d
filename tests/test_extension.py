"""A new identifier scheme and a new kind of decoder, each one class plus one YAML, all from this file: no
genretr module changes (issue 15).  The YAMLs go into a config folder that Hydra searches beside genretr's
(`hydra.searchpath`), the classes are named by `_target_`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lightning as L

from genretr.data.datamodules import IdentifierDataModule
from genretr.identifiers.base import PAD, SPECIAL_TOKENS, IdTable
from genretr.pipeline import Pipeline
from genretr.samples import decoder_samples

SCHEME_YAML = f"_target_: {__name__}.DigitScheme\nbase: 4\n"
BACKBONE_YAML = f"""adapter:
  _target_: {__name__}.BigramAdapter
model:
  _target_: {__name__}.BigramDecoder
  lr: 0.01
fit: {{max_epochs: 8, batch_size: 32}}
"""


class DigitScheme:
    """Each item's position in base `base`, one token per digit (a toy numeric identifier)."""

    def __init__(self, base: int = 4):
        self.base = base

    def build(self, items, embeddings, ctx) -> IdTable:
        width = int(np.ceil(np.log(max(len(items), 2)) / np.log(self.base)))
        digits = [[(i // self.base ** p) % self.base for p in reversed(range(width))] for i in range(len(items))]
        first = len(SPECIAL_TOKENS)
        return IdTable.from_lists([it.id for it in items], [[first + d for d in ds] for ds in digits],
                                  SPECIAL_TOKENS + [f"d{k}" for k in range(self.base)])


class BigramStep:
    """`genretr.decoding.protocol.StepDecoder` of `BigramDecoder`: no cache, the query's logits plus the previous token's."""

    def __init__(self, model):
        self.model, self.vocab_size = model, model.vocab_size

    @property
    def device(self):
        return self.model.query.weight.device

    def prepare(self, queries):
        return self.model.query(queries)  # (N, V)

    def new_cache(self, rows, T):
        return None

    def step(self, tokens, t, N, S, state, cache, T):
        return state.repeat_interleave(S, 0) + self.model.previous(tokens)  # (N * S, V)

    def reorder(self, cache, rows, upto):
        pass


class BigramDecoder(L.LightningModule):
    """logits(token | query, previous token) = W z + E[previous]: the smallest model the engine can search."""

    def __init__(self, vocab_size: int, input_dim: int, lr: float = 0.01):
        super().__init__()
        self.vocab_size, self.lr = vocab_size, lr
        self.query, self.previous = nn.Linear(input_dim, vocab_size), nn.Embedding(vocab_size, vocab_size)

    def step_decoder(self):
        return BigramStep(self)

    def training_step(self, batch, _):
        labels = batch["labels"]  # (B, L) identifier tokens, PAD-padded
        prev = torch.cat([torch.full_like(labels[:, :1], PAD), labels[:, :-1]], 1)
        logits = self.query(batch["z"])[:, None] + self.previous(prev)  # (B, L, V)
        return nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=PAD)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class BigramAdapter:
    """The stages' view of `BigramDecoder` (genretr.stages.decoders): it reads the query's vector."""

    reads_query_vectors = True
    add_ons = frozenset({"query_texts"})  # of the paper add-ons (genretr.stages.addons), it takes only this

    def query_inputs(self, ctx, ds, emb, queries, table=None, vecs=None):
        return emb.queries([q.id for q in queries]) if vecs is None else vecs

    def model_builder(self, ctx, ds, emb, table):
        from hydra.utils import instantiate

        return lambda: instantiate(ctx.cfg.backbone.model, vocab_size=table.vocab_size,
                                   input_dim=emb.item_vecs.shape[1])

    def training(self, ctx, ds, emb, table, model):
        samples = decoder_samples(ds, emb, table, ctx.tasks(), memorize_repeat=2)
        return IdentifierDataModule(samples, int(ctx.cfg.backbone.fit.batch_size), int(ctx.cfg.seed)), {}

    def decoding_table(self, model, table):
        return table

    def index_key(self, backbone_cfg):
        return [], []

    def search_add_ons(self, ctx, ds, table):
        return []


@pytest.fixture
def conf_dir(tmp_path):
    (tmp_path / "conf" / "identifier").mkdir(parents=True)
    (tmp_path / "conf" / "backbone").mkdir()
    (tmp_path / "conf" / "identifier" / "digits.yaml").write_text(SCHEME_YAML)
    (tmp_path / "conf" / "backbone" / "bigram.yaml").write_text(BACKBONE_YAML)
    return tmp_path / "conf"


def test_a_scheme_and_a_decoder_from_this_file_alone(make_cfg, conf_dir, tmp_path):
    cfg = make_cfg(f"hydra.searchpath=[file://{conf_dir}]", "identifier=digits", "backbone=bigram", "threads=1", "decoding.num_beams=10")
    p = Pipeline(cfg, tmp_path / "run")
    ds = p.dataset()
    emb = p.encode(ds)
    table = p.identify(ds, emb)
    assert table.text(table.item_ids[5]) == "d0 d0 d1 d1"  # 5 in base 4, four digits for 80 items
    metrics = p.run()["t2i"]
    assert metrics["queries"] == 100 and 0 < metrics["R@10"] <= 1
    model = p.train(ds, emb, table)  # from the cache: the train stage ran the adapter's samples through fit
    samples = decoder_samples(ds, emb, table, ["t2i"], retrieve=False)
    untrained = BigramDecoder(table.vocab_size, emb.item_vecs.shape[1])
    with torch.no_grad():
        assert model.training_step(samples, 0) < 0.8 * untrained.training_step(samples, 0)
    queries = ds.queries("test", "t2i")[:3]
    rankings, _ = p.searcher(ds, emb, "t2i", model, table, p.index(ds, table))(emb.queries([q.id for q in queries]))
    pool = set(ds.splits["test"].pools["t2i"])
    assert all(len(r) == 10 and set(r) <= pool for r in rankings)  # ten pool items each, through the trie


def test_the_toy_decoder_refuses_an_add_on_it_does_not_take(make_cfg, conf_dir):
    from genretr.errors import GenretrError
    from genretr.validate import validate

    cfg = make_cfg(f"hydra.searchpath=[file://{conf_dir}]", "identifier=digits", "backbone=bigram",
                   "train.pseudo_queries=true")
    with pytest.raises(GenretrError, match=r"train.pseudo_queries=true \(pseudo_queries\) is not taken by BigramAdapter"):
        validate(cfg)
    validate(make_cfg(f"hydra.searchpath=[file://{conf_dir}]", "identifier=digits", "backbone=bigram"))
