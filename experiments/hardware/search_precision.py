"""Does the bf16 model step change what the search returns?  (issue 18: bf16 search must return the same top-10
item lists as fp32 for >= 99% of queries on the default decoders.)

For each seed, the run's models come from the artifact cache (or are trained, as `python -m genretr.run` would),
and the eval split's t2i queries are searched twice, with `decoding.precision=fp32` and `=bf16`; prints the share
of queries whose top-10 lists are identical (same items, same order), the same as sets, the same top-1, and
R@1 / R@10 of both, per seed and pooled:

    .venv/bin/python experiments/hardware/search_precision.py --seeds 0,1,2,3,4 [OVERRIDE ...]

Pass the overrides the runs were made with (e.g. `threads=1 paths.cache_dir=...`): anything else is a new model.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from genretr.decoding.engine import topk_agreement
from genretr.hardware import auto_threads
from genretr.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[2]


def recall(queries, rankings, k: int) -> float:
    return 100 * sum(bool(set(r[:k]) & set(q.relevant)) for q, r in zip(queries, rankings)) / len(queries)


def main(args: list[str]) -> None:
    seeds = [0]
    if "--seeds" in args:
        i = args.index("--seeds")
        seeds, args = [int(s) for s in args[i + 1].split(",") if s], args[:i] + args[i + 2:]
    pooled = {"fp32": [], "bf16": []}
    for seed in seeds:
        found = {}
        for precision in ("fp32", "bf16"):
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
                cfg = compose("config", overrides=[*args, f"seed={seed}", f"decoding.precision={precision}",
                                                   "progress=false", "logger=none"])
            torch.set_num_threads(auto_threads(cfg.get("threads", "auto")))
            start = time.perf_counter()
            _, queries, rankings = Pipeline(cfg, Path("outputs/search_precision")).task_rankings("t2i")
            found[precision] = (queries, rankings, time.perf_counter() - start)
        (q, a, ta), (_, b, tb) = found["fp32"], found["bf16"]
        pooled["fp32"] += a
        pooled["bf16"] += b
        print(f"seed {seed}: {len(q)} queries; identical top-10 {100 * topk_agreement(a, b, 10):.1f}%, same top-10 set "
              f"{100 * topk_agreement(a, b, 10, ordered=False):.1f}%, same top-1 {100 * topk_agreement(a, b, 1):.1f}%; "
              f"R@1 fp32 {recall(q, a, 1):.1f} bf16 {recall(q, b, 1):.1f}, R@10 fp32 {recall(q, a, 10):.1f} bf16 "
              f"{recall(q, b, 10):.1f}; wall fp32 {ta:.0f} s bf16 {tb:.0f} s (incl. loading)", flush=True)
    a, b = pooled["fp32"], pooled["bf16"]
    print(f"pooled over seeds {','.join(map(str, seeds))} ({len(a)} queries): identical top-10 "
          f"{100 * topk_agreement(a, b, 10):.1f}%, same set {100 * topk_agreement(a, b, 10, ordered=False):.1f}%, "
          f"same top-1 {100 * topk_agreement(a, b, 1):.1f}%")


if __name__ == "__main__":
    main(sys.argv[1:])
