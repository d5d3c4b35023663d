"""bf16 against fp32 training, paired over queries and seeds (issue 18: bf16 must leave accuracy unchanged
within noise).  Reads two `python -m genretr.bench stability` outputs of the same seeds and thread count, one
run with the default precision (bf16 where the hardware has it), one with `precision=fp32`:

    .venv/bin/python -m genretr.bench stability --threads 1 --out bench_out/stability
    .venv/bin/python -m genretr.bench stability --threads 1 --out bench_out/stability_fp32 precision=fp32
    .venv/bin/python experiments/hardware/compare_precision.py bench_out/stability bench_out/stability_fp32

For each method and metric: mean ± std over seeds of each side, the paired sign-flip permutation test
(genretr.stats) over every (seed, query) pair ("not separated" at p >= 0.05), and the same test over the
per-seed means (exact).  The first counts queries as the only chance; between two trainings the seed is a
second one, and the larger: over seeds 0-7 the decoder's R@1 differed by 0.9 points with p = 0.02 over
queries and p = 0.45 over seeds, while four of those seeds alone had given -1.2 with p = 0.04 over queries.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from genretr.evaluation.metrics import per_query_scores
from genretr.stats import paired_permutation_test, summary

METRICS = ("R@1", "R@10", "MRR@10")


def verdict(test) -> str:
    return "not separated" if test.p_value >= 0.05 else ("higher" if test.mean_diff > 0 else "lower")


def ranks(run_dir: Path, task: str = "t2i") -> dict[str, int]:
    found = json.loads((run_dir / "per_query.json").read_text())[task]
    return dict(zip(found["query_ids"], found["rank"]))


def main(a_root: str, b_root: str, threads: str = "1") -> None:
    a_root, b_root = Path(a_root) / f"t{threads}", Path(b_root) / f"t{threads}"
    seeds = sorted(p.name for p in a_root.glob("seed*") if (b_root / p.name).is_dir())
    for method in ("embedding", "generative"):
        pairs = [(ranks(a_root / s / method), ranks(b_root / s / method)) for s in seeds
                 if (a_root / s / method / "per_query.json").is_file() and (b_root / s / method / "per_query.json").is_file()]
        if not pairs:
            continue
        for metric in METRICS:
            per_seed_a, per_seed_b, xa, xb = [], [], [], []
            for ra, rb in pairs:
                ids = sorted(ra.keys() & rb.keys())
                sa = per_query_scores([ra[i] for i in ids], metric)
                sb = per_query_scores([rb[i] for i in ids], metric)
                per_seed_a.append(100 * sa.mean()), per_seed_b.append(100 * sb.mean())
                xa.append(sa), xb.append(sb)
            test = paired_permutation_test(np.concatenate(xa), np.concatenate(xb))
            seeds_test = paired_permutation_test(per_seed_a, per_seed_b)
            sa, sb = summary(per_seed_a), summary(per_seed_b)
            print(f"{method} {metric}: {a_root.parent.name} {sa.mean:.1f} ± {sa.std:.1f} vs {b_root.parent.name} "
                  f"{sb.mean:.1f} ± {sb.std:.1f} (n={sa.n} seeds, {test.n_pairs} pairs); diff "
                  f"{100 * test.mean_diff:+.2f}; over queries p = {test.p_value:.3g}: {verdict(test)}; "
                  f"over seeds p = {seeds_test.p_value:.3g}: {verdict(seeds_test)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
