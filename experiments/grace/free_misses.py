"""What free generation writes (GRACE Sec. 4.3, Table 2 "w/o constrained generation"): each beam of a t2i query
is a test-pool image's identifier, a training image's identifier (GRACE's reason 2), or no identifier at all
(reason 1); and R@1 / R@10 with the misses held at their ranks (genretr's reading since 94ae6ea) against skipped
(the earlier reading, in which the identifiers below a miss moved up).

    .venv/bin/python experiments/grace/free_misses.py experiment=grace_table2 identifier=string seed=0

Uses the trained model in the artifact cache (`GENRETR_CACHE`; runs what is missing).  Prints one line per run.
"""
import collections
import os
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from genretr.decoding.engine import beam_search, rank_items
from genretr.evaluation.metrics import first_hit_ranks
from genretr.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[2]
CACHE = os.environ.get("GENRETR_CACHE", str(ROOT / ".cache/genretr"))
KINDS = ("pool", "train image", "no identifier")


def main(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=[*overrides, "decoding.constrained=false", f"paths.cache_dir={CACHE}",
                                           "progress=false"])
    p = Pipeline(cfg, Path("outputs/free_misses"))
    ds, emb, table, model, tries = p.trained()
    queries = ds.queries(cfg.eval.split, "t2i")
    inputs = p.ctx.queries_of(ds, emb, queries, table)
    d = cfg.decoding
    result = beam_search(model, inputs, None, int(d.num_beams), float(d.length_penalty), max_len=tries["t2i"].max_len,
                         batch_size=int(d.batch_size))
    pool = set(p.ctx.pool(ds, "t2i"))

    def kind(seq):
        items = table.items_of(seq)  # every identified item: the pool's and the training images'
        return KINDS[0] if pool & set(items) else KINDS[1] if items else KINDS[2]

    top, every = collections.Counter(), collections.Counter()
    for q in range(len(queries)):
        for b in range(result.scores.shape[1]):
            if result.scores[q, b] == float("-inf"):
                break
            k = kind(result.tokens[q, b, : result.lengths[q, b]].tolist())
            every[k] += 1
            top[k] += b == 0
    pool_table = table.subset(sorted(pool))
    relevant = [q.relevant for q in queries]
    held = first_hit_ranks(rank_items(result, pool_table, None, int(cfg.eval.top_k), misses=True)[0], relevant)
    skipped = first_hit_ranks(rank_items(result, pool_table, None, int(cfg.eval.top_k))[0], relevant)
    n, beams = len(queries), sum(every.values())
    share = lambda c, total: " / ".join(f"{100 * c[k] / total:.1f}" for k in KINDS)  # noqa: E731
    print(f"{' '.join(overrides)}: top beam {share(top, n)} %, every beam {share(every, beams)} % "
          f"({' / '.join(KINDS)}); R@1 held {100 * ((held == 1).mean()):.1f}, skipped "
          f"{100 * ((skipped == 1).mean()):.1f}; R@10 held {100 * ((held > 0) & (held <= 10)).mean():.1f}, "
          f"skipped {100 * ((skipped > 0) & (skipped <= 10)).mean():.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
