"""The train / index / evaluate stages for MLLM backbones (`backbone=qwen25vl|llava|idefics`).

An MLLM reads samples, not vectors (genretr.backbones.mllm): memorize samples are an item's image (or
text) with GRACE's inst-m, retrieve samples a training query with inst-r (GRACE Sec. 3.4-3.5); the answer
is the identifier, followed by SSID's rationale when the identifier scheme wrote one 
and `backbone.model.reason` asks for it (`IdTable.reasons`).  Identifiers are decoded over the LLM's own vocabulary: the trie
holds each identifier's LLM tokens (`model.id_table`).
"""
from __future__ import annotations

from torch.utils.data import Dataset

from genretr.data.datamodules import PhasedDataModule
from genretr.errors import GenretrError
from genretr.identifiers.base import IdTable


class SampleList(Dataset):
    def __init__(self, samples: list[dict]):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


class SampleDataModule(PhasedDataModule):
    """Lists of sample dicts, batched by the model's own `collate` (its processor).  A sample's ``phase`` (0:
    memorize, 1: retrieve) is read here and not passed on: with ``schedule="phased"`` the first `memorize_epochs`
    epochs draw only the memorize samples (GRACE: learning to memorize, then to retrieve), as
    `genretr.data.datamodules.IdentifierDataModule` does for sample tensors."""

    def __init__(self, samples: list[dict], collate, batch_size: int, seed: int = 0, schedule: str = "interleaved",
                 memorize_epochs: int = 0):
        memorize_rows = [i for i, s in enumerate(samples) if s.get("phase") == 0]
        samples = [{k: v for k, v in s.items() if k != "phase"} for s in samples]
        super().__init__(SampleList(samples), batch_size, seed, memorize_rows, schedule, memorize_epochs,
                         collate_fn=collate)


def query_sample(ds, q) -> dict:
    return {"text": q.text, "image": None if q.image is None else ds.images[q.image]}


def item_sample(ds, item) -> dict:
    return {"image": None if item.image is None else ds.images[item.image],
            "text": item.text if item.image is None else None}


def training_samples(ds, table: IdTable, tasks, reasons: dict, memorize: bool, memorize_repeat: int,
                     retrieve: bool, needs_reason: bool) -> list[dict]:
    def answer(item_id):
        if needs_reason and not reasons.get(item_id):
            raise GenretrError(f"train.reason asks for a rationale but item {item_id} has none: use "
                               "identifier=ssid (it writes them) or train.reason=none")
        return {"answer": table.text(item_id), "reason": reasons.get(item_id)}

    out = []
    if memorize:
        for _ in range(memorize_repeat):
            out += [{**item_sample(ds, ds.items[i]), **answer(i), "phase": 0} for i in table.item_ids]
    if retrieve:
        index = set(table.item_ids)
        out += [{**query_sample(ds, q), **answer(r), "phase": 1} for q in ds.splits["train"].queries
                if q.task in tasks for r in q.relevant if r in index]
    if not out:
        raise GenretrError("no MLLM training samples: train.memorize and train.retrieve are both off or empty")
    return out


def llm_table(model, table: IdTable) -> IdTable:
    """The identifiers as LLM tokens (each ends with the model's terminator), for the trie and the ranking."""
    llm = model.id_table(list(table.item_ids), [table.text(i) for i in table.item_ids])
    llm.reasons = dict(table.reasons)
    return llm
