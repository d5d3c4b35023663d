"""Stability of the default training over seeds and thread counts: `python -m genretr.bench stability
[--seeds 0,1,2,3,4] [--threads 1,2] [--methods embedding,generative] [--out DIR] [-- OVERRIDE ...]`.

Trains the default experiment (`make run`: the embedding baseline and string IDs + T5 decoder on shapes)
once per (seed, thread count) through `python -m genretr.run`, each thread count with its own artifact
cache so that no model is reused across thread counts (torch's CPU kernels sum in another order at
another thread count, and training amplifies it).  One-thread runs go two side by side (both cores, no
oversubscription); runs of more threads go one at a time.  Prints t2i R@1 / R@10 per run, then mean ± std,
min and max per method, and the issue's budgets (embedding R@1 min ≥ 60 and std ≤ 2; generative R@10
std ≤ 2) as pass/miss lines.  Writes `stability.csv` and `stability.json` under `--out`.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from genretr.stats import summary

BUDGETS = (("embedding", "R@1", "min", 60.0), ("embedding", "R@1", "std", 2.0), ("generative", "R@10", "std", 2.0))


def add_arguments(p):
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma list of seeds")
    p.add_argument("--threads", default="1,2", help="comma list of torch thread counts")
    p.add_argument("--methods", default="embedding,generative", help="comma list of method=… values, in order")
    p.add_argument("--out", default="bench_out/stability")
    p.add_argument("--jobs", type=int, default=2, help="one-thread runs side by side (default 2: both cores)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. debug=tiny)")


def _command(method: str, seed: int, threads: int, out: Path, overrides) -> tuple[list[str], Path]:
    run_dir = out / f"t{threads}" / f"seed{seed}" / method
    cmd = [sys.executable, "-m", "genretr.run", f"method={method}", f"seed={seed}", f"threads={threads}",
           "progress=false", "logger=none", f"paths.cache_dir={out / f't{threads}' / 'cache'}",
           f"hydra.run.dir={run_dir}", *overrides]
    return cmd, run_dir


def _run_chain(chain: list[tuple[list[str], Path]], env: dict) -> None:
    """One seed's runs in order (the generative run reuses the embedding run's dataset and encoder)."""
    for cmd, run_dir in chain:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "stdout.log", "w") as log:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        if code != 0:
            raise SystemExit(f"genretr.bench stability: a run failed (exit {code}): see {run_dir / 'stdout.log'}")


def _run_all(chains: list, parallel: int, env: dict) -> None:
    """Every chain, `parallel` at a time; the first failure cancels the chains not yet started."""
    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        for done in [pool.submit(_run_chain, chain, env) for chain in chains]:
            done.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _summary(values: list[float]) -> dict:
    """`genretr.stats.summary` (mean, sample std, n) with the range."""
    st = summary(values)
    return {"n": st.n, "mean": st.mean, "std": st.std if st.n > 1 else 0.0, "min": min(values), "max": max(values)}


def run(args) -> int:
    out = Path(args.out).resolve()
    seeds = [int(s) for s in args.seeds.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    methods = args.methods.split(",")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OMP_NUM_THREADS", None)  # `threads=` sets torch's count in each run
    start = time.perf_counter()
    for t in threads:
        chains = [[_command(m, s, t, out, args.overrides) for m in methods] for s in seeds]
        _run_all(chains, args.jobs if t == 1 else 1, env)
    rows = []
    for t in threads:
        for s in seeds:
            row = {"threads": t, "seed": s}
            for m in methods:
                metrics = json.loads((_command(m, s, t, out, args.overrides)[1] / "results.json").read_text())
                for k in ("R@1", "R@10"):
                    row[f"{m} {k}"] = 100 * metrics["metrics"]["t2i"][k]
            rows.append(row)
    cols = [f"{m} {k}" for m in methods for k in ("R@1", "R@10")]
    print(f"\nt2i over seeds {args.seeds} x threads {args.threads} ({time.perf_counter() - start:.0f} s)\n")
    print("| threads | seed | " + " | ".join(cols) + " |")
    print("|---:|---:|" + "---:|" * len(cols))
    for r in rows:
        print(f"| {r['threads']} | {r['seed']} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |")
    stats = {c: _summary([r[c] for r in rows]) for c in cols}
    print("\n| | n | mean ± std | min | max |\n|---|---:|---:|---:|---:|")
    for c, st in stats.items():
        print(f"| {c} | {st['n']} | {st['mean']:.1f} ± {st['std']:.1f} | {st['min']:.1f} | {st['max']:.1f} |")
    print()
    for method, metric, stat, bound in BUDGETS:
        col = f"{method} {metric}"
        if col not in stats:
            continue
        value = stats[col][stat]
        ok = value >= bound if stat == "min" else value <= bound
        print(f"budget {col} {stat} {'≥' if stat == 'min' else '≤'} {bound:g}: {value:.1f} -> "
              f"{'pass' if ok else 'MISS'}")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "stability.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["threads", "seed", *cols])
        w.writeheader()
        w.writerows(rows)
    (out / "stability.json").write_text(json.dumps({"rows": rows, "summary": stats}, indent=2) + "\n")
    return 0
