"""The index stage (DESIGN.md): one prefix trie (`genretr.decoding.csr_trie.CSRTrie`) of the identifiers in
each pool the run searches; its allowed() serves the HF path's prefix_allowed_tokens_fn, its vectorised
children()/step() the genretr engine."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from genretr.data.schema import RetrievalDataset
from genretr.decoding.csr_trie import CSRTrie
from genretr.identifiers.base import IdTable
from genretr.stages import keys

if TYPE_CHECKING:  # stages read the run's context; only genretr.pipeline makes one
    from genretr.stages.context import RunContext


def run(ctx: RunContext, ds: RetrievalDataset, table: IdTable) -> dict[str, CSRTrie]:
    """task -> the trie of its pool."""
    split, pools = ctx.cfg.eval.split, searched_pools(ctx)
    key = ctx.keys["index"] = keys.index(ctx, split, pools)

    def write(tmp: Path):
        for name, trie in pool_tries(ds, table, split, pools).items():
            (tmp / name).mkdir()
            trie.save(tmp / name)

    path = ctx.store.produce("index", key, write)
    return by_task(ctx, {name: CSRTrie.load(path / name) for name in pools})


def in_memory(ctx: RunContext, ds: RetrievalDataset, table: IdTable) -> dict[str, CSRTrie]:
    """`run`'s tries, built and not cached (a finished run with items added, `genretr.search`)."""
    return by_task(ctx, pool_tries(ds, table, ctx.cfg.eval.split, searched_pools(ctx)))


def searched_pools(ctx: RunContext) -> list[str]:
    return sorted({ctx.pool_name(t) for t in ctx.tasks()})


def pool_tries(ds: RetrievalDataset, table: IdTable, split: str, pools: list[str]) -> dict[str, CSRTrie]:
    """pool name -> the trie of the identifiers of its items (`split`'s pools)."""
    return {name: CSRTrie.from_table(table.subset(ds.splits[split].pools[name])) for name in pools}


def by_task(ctx: RunContext, tries: dict[str, CSRTrie]) -> dict[str, CSRTrie]:
    """task -> the trie of the pool it searches."""
    return {task: tries[ctx.pool_name(task)] for task in ctx.tasks()}
