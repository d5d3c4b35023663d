"""Why GENIUS Table 9 loses R@5 at wide beams on shapes: search error or the decoder's own scores?

A beam at least as wide as a task's pool has distinct identifiers is exhaustive: it returns the exact ranking by
the decoder's summed log-probability.  For each seed this searches every eval query of each task (not only the
250 a table scores) with beam 10 and with such a beam, and prints R@1/5/10 of both, the paired permutation test
of R@5 over queries, and how large the pool's groups of items sharing a code prefix are for the items that
enter and leave the top-5 when the beam widens (a bias toward sparse branches would show as smaller groups):

    .venv/bin/python experiments/genius/exhaustive_beam.py --seeds 0,1,2 --tasks t2i,i2t [OVERRIDE ...]

The models come from the artifact cache when the overrides match the table's runs (`threads=1`, as
`make reproduce-genius-table9` runs them; `paths.cache_dir=...`), or are trained as `python -m genretr.run` would.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from genretr.hardware import auto_threads
from genretr.pipeline import Pipeline
from genretr.stats import paired_permutation_test

ROOT = Path(__file__).resolve().parents[2]
NARROW = 10


def hits_at(queries, rankings, k: int) -> np.ndarray:
    return np.array([bool(set(r[:k]) & set(q.relevant)) for q, r in zip(queries, rankings)], dtype=float)


def search(overrides: list[str], seed: int, task: str, beams: int | None):
    """(queries, rankings, pool codes) of `task`'s eval queries; `beams` None: the pool's distinct codes."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=["experiment=genius_table9", *overrides, f"seed={seed}",
                                           "progress=false", "logger=none"])
    torch.set_num_threads(auto_threads(cfg.get("threads", "auto")))
    run = Pipeline(cfg, Path("outputs/exhaustive_beam"))
    ds, emb, table, model, tries = run.trained()
    codes = {it.id: table.tokens(it.id) for it in ds.pool(cfg.eval.split, task)}
    width = beams or len(set(codes.values()))
    run.cfg.decoding.num_beams = width
    queries = ds.queries(cfg.eval.split, task)
    rankings, _ = run.searcher(ds, emb, task, model, table, tries)(run.ctx.queries_of(ds, emb, queries, table))
    return queries, rankings, codes, width


def main(args: list[str]) -> None:
    opts = {"--seeds": "0", "--tasks": "t2i"}
    for flag in opts:
        if flag in args:
            i = args.index(flag)
            opts[flag], args = args[i + 1], args[:i] + args[i + 2:]
    for task in opts["--tasks"].split(","):
        pooled = {"narrow": [], "exact": []}
        for seed in [int(s) for s in opts["--seeds"].split(",")]:
            queries, narrow, _, _ = search(args, seed, task, NARROW)
            _, exact, codes, width = search(args, seed, task, None)
            line = [f"seed {seed} {task}: {len(queries)} queries, pool {len(codes)} items / {width} codes;"]
            for k in (1, 5, 10):
                line.append(f"R@{k} beam {NARROW} {100 * hits_at(queries, narrow, k).mean():.1f} "
                            f"exact {100 * hits_at(queries, exact, k).mean():.1f};")
            print(" ".join(line), flush=True)
            pooled["narrow"].append(hits_at(queries, narrow, 5))
            pooled["exact"].append(hits_at(queries, exact, 5))
            enter = [i for a, e in zip(narrow, exact) for i in e[:5] if i not in a[:5]]
            leave = [i for a, e in zip(narrow, exact) for i in a[:5] if i not in e[:5]]
            for depth in range(2, len(next(iter(codes.values())))):
                group = Counter(c[:depth] for c in codes.values())
                print(f"  items sharing the first {depth} codes in the pool: {np.mean([group[codes[i][:depth]] for i in enter]):.2f}"
                      f" for the {len(enter)} entering the top-5, {np.mean([group[codes[i][:depth]] for i in leave]):.2f}"
                      " for those leaving")
        a, b = np.concatenate(pooled["exact"]), np.concatenate(pooled["narrow"])
        test = paired_permutation_test(a, b)
        print(f"{task} pooled over seeds ({len(a)} queries): R@5 exact - beam {NARROW} = "
              f"{100 * test.mean_diff:+.2f} points (p {test.p_value:.4f}); queries gained {int(((a - b) > 0).sum())}, "
              f"lost {int(((a - b) < 0).sum())}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
