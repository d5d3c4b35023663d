"""What the SSID experiment scripts score against: the keywords generator's canonical words (synonym classes
learned from the train split's t2i captions) and each test image's true captions."""
from __future__ import annotations

import collections

from hydra.utils import instantiate


def train_captions(ds) -> dict[str, list[str]]:
    """{train image: its t2i captions}."""
    train = collections.defaultdict(list)
    for q in ds.splits["train"].queries:
        if q.task == "t2i":
            train[next(iter(q.relevant))].append(q.text)
    return train


def fitted_generator(cfg, ds):
    """The run's generator (`keywords`), fitted on the train captions: its `words` are canonical words."""
    train = train_captions(ds)
    gen = instantiate(cfg.generator)
    gen.fit([t for g in train.values() for t in g], list(train.values()))
    return gen


def true_captions(ds, split: str) -> dict[str, list[str]]:
    """{image: the captions of the t2i queries of `split` that ask for it}."""
    true = collections.defaultdict(list)
    for q in ds.queries(split, "t2i"):
        true[next(iter(q.relevant))].append(q.text)
    return true
