"""genretr.identifiers.atomic.AtomicIdentifier (GRACE atomic IDs, Sec. 3.3)."""
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from genretr.errors import GenretrError
from genretr.identifiers.atomic import AtomicIdentifier
from genretr.identifiers.base import EOS, IdentifierContext, SPECIAL_TOKENS

CONF = Path(__file__).resolve().parents[2] / "conf"
CTX = IdentifierContext(train_texts=[], workdir=None)


def test_one_new_token_per_item():
    items = [SimpleNamespace(id=f"img{i}") for i in range(37)]
    t = AtomicIdentifier().build(items, None, CTX)
    assert t.vocab_size == len(items) + 2 and t.vocab[:2] == SPECIAL_TOKENS
    assert t.new_tokens == t.vocab[2:] and len(set(t.vocab)) == t.vocab_size
    toks = [t.tokens(it.id) for it in items]
    assert all(len(s) == 2 and s[1] == EOS for s in toks)
    assert sorted(s[0] for s in toks) == list(range(2, len(items) + 2))
    assert t.text("img17") == "<item_17>"
    assert t.collisions() == 0 and all(t.items_of(s) == [it.id] for s, it in zip(toks, items))


def test_head_is_a_plain_yaml_key_the_class_checks():
    cfg = OmegaConf.load(CONF / "identifier" / "atomic.yaml")
    assert cfg.head == "vocab"
    scheme = instantiate(cfg)
    assert isinstance(scheme, AtomicIdentifier) and scheme.head == "vocab"
    assert AtomicIdentifier(head="classifier").head == "classifier"
    with pytest.raises(GenretrError, match="head=softmax"):
        AtomicIdentifier(head="softmax")
