"""Items added without retraining against the same items memorised in training (issue 19).

Per scheme and seed, two runs of the default shapes config: the full one (its test pool of 500 images
identified, memorised and searched) and one whose test split holds only the first 80% of those images (shapes
generates each split from (seed, split), so the smaller split is a prefix of the larger: checked below).  The
held-out 20% are then added to the second run with `genretr.add` (its trained encoder embeds them, its trained
scheme identifies them) and the t2i queries of the held-out images are searched in both runs, over the same
pool of 500 images, each query embedded anew by the run's own encoder.  An item whose identifier needs a token
the decoder never learned (CART's unique token, a structured leaf position, a caption word) is refused by
`genretr.add` and counted as a miss.

    .venv/bin/python experiments/added_items.py --schemes genius,cart --seeds 0,1,2 --out bench_out/added
    (schemes with `assign`: genius, cart, structured, image_tokens, semantic, ssid)

Runs go two at a time, one thread each.  Prints R@1/5/10 per seed, mean ± std over seeds, and the paired
permutation test (genretr.stats) of R@10 over every (seed, query) pair, memorised against added.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HOLDOUT = 0.2


def genretr_run(out: Path, name: str, overrides: list[str]) -> Path:
    run_dir = out / name
    if (run_dir / "results.json").is_file():
        return run_dir
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "genretr.run", "logger=none", "threads=1", "progress=false",
                           *overrides, f"paths.cache_dir={out / 'cache'}", f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return run_dir


def first_hits(run, queries) -> list[int]:
    """The 1-based rank of each query's first relevant item in its top 10 (0: none), the query embedded anew."""
    found = run.search(queries, 10, run.embed(queries))
    return [next((h.rank for h in hits if h.relevant), 0) for hits in found]


def add_held_out(full, held, held_dir: Path, out_dir: Path) -> int:
    """Add the `held` items of the `full` run to the held-out run `held_dir` (one genretr.add call, or one per
    item when the scheme refuses some): the number refused."""
    from genretr.additions import Additions
    from genretr.add import add, read_items
    from genretr.errors import GenretrError
    from genretr.search import LoadedRun

    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for iid in held:
        name = iid.replace("/", "_") + ".png"
        Image.fromarray(np.asarray(full.ds.images[full.ds.items[iid].image])).save(out_dir / name)
        lines.append(json.dumps({"id": iid, "image": name}))
    (out_dir / "items.jsonl").write_text("\n".join(lines) + "\n")
    run = LoadedRun(held_dir)
    entries = read_items(out_dir / "items.jsonl", run.image_size())
    try:
        run.added.extended(add(run, entries)).save(held_dir)
        return 0
    except GenretrError:
        pass
    added, refused = run.added, 0
    for entry in entries:
        try:
            added = added.extended(add(run, [entry]))
        except GenretrError:
            refused += 1
    added.save(held_dir)
    return refused


def one(scheme: str, seed: int, out: Path, pool: ThreadPoolExecutor, test: int, extra: list[str]) -> dict:
    from genretr.search import LoadedRun

    common = ["method=generative", f"identifier={scheme}", f"seed={seed}", *extra]
    kept = int(test * (1 - HOLDOUT))
    full_job = pool.submit(genretr_run, out, f"{scheme}_s{seed}_full", common)
    held_job = pool.submit(genretr_run, out, f"{scheme}_s{seed}_held", [*common, f"dataset.splits.test={kept}"])
    full_dir, held_dir = full_job.result(), held_job.result()
    full, smaller = LoadedRun(full_dir), LoadedRun(held_dir)
    added_before = {x.id for x in smaller.added.items}  # a rerun: the held-out items were added already
    kept_ids = set(smaller.ds.splits["test"].pools["t2i"]) - added_before
    pool_ids = full.ds.splits["test"].pools["t2i"]
    held = [i for i in pool_ids if i not in kept_ids]
    for iid in kept_ids:  # the smaller test split is a prefix of the larger: the same images under the same ids
        if not np.array_equal(full.ds.images[full.ds.items[iid].image],
                              smaller.ds.images[smaller.ds.items[iid].image]):
            raise SystemExit(f"{iid} differs between the full and the held-out run: not a prefix split")
    if not (held_dir / "added").exists():
        refused = add_held_out(full, held, held_dir, out / f"{scheme}_s{seed}_items")
    else:
        refused = json.loads((out / f"{scheme}_s{seed}_refused.json").read_text())["refused"]
    (out / f"{scheme}_s{seed}_refused.json").write_text(json.dumps({"refused": refused}))
    added = LoadedRun(held_dir)
    if len(added.ds.splits["test"].pools["t2i"]) != len(pool_ids) - refused:
        raise SystemExit(f"{held_dir}: the pool after the additions is not the full run's less the refused items")
    queries = [q for q in full.ds.queries("test", "t2i") if set(q.relevant) & set(held)]
    return {"scheme": scheme, "seed": seed, "held_out": len(held), "refused": refused, "queries": len(queries),
            "memorised": first_hits(full, queries), "added": first_hits(added, queries)}


def recall(ranks, k):
    return float(np.mean([0 < r <= k for r in ranks]))


def main(argv=None) -> int:
    from genretr.stats import paired_permutation_test, summary

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--schemes", default="genius,cart")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="bench_out/added")
    p.add_argument("--tiny", action="store_true", help="debug=tiny runs (20 test images): a smoke run")
    args = p.parse_args(argv)
    test, extra = (20, ["debug=tiny"]) if args.tiny else (500, [])
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with ThreadPoolExecutor(2) as pool:
        for scheme in args.schemes.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                rows.append(one(scheme, seed, out, pool, test, extra))
                r = rows[-1]
                print(f"{scheme} seed {seed}: {r['queries']} queries of {r['held_out']} held-out images "
                      f"({r['refused']} refused); R@1/5/10 memorised "
                      + "/".join(f"{100 * recall(r['memorised'], k):.1f}" for k in (1, 5, 10)) + ", added "
                      + "/".join(f"{100 * recall(r['added'], k):.1f}" for k in (1, 5, 10)), flush=True)
    (out / "added_items.json").write_text(json.dumps(rows))
    print("\n| scheme | seeds | queries | refused | R@1 mem. | R@1 added | R@5 mem. | R@5 added | R@10 mem. "
          "| R@10 added | R@10 added - mem. (paired p) |\n|---|---:|---:|---:|---|---|---|---|---|---|---|")
    for scheme in args.schemes.split(","):
        mine = [r for r in rows if r["scheme"] == scheme]
        cells = []
        for k in (1, 5, 10):
            for side in ("memorised", "added"):
                s = summary([100 * recall(r[side], k) for r in mine])
                cells.append(f"{s.mean:.1f} ± {s.std:.1f}")
        a = np.concatenate([[0 < x <= 10 for x in r["added"]] for r in mine]).astype(float)
        m = np.concatenate([[0 < x <= 10 for x in r["memorised"]] for r in mine]).astype(float)
        t = paired_permutation_test(a, m)
        print(f"| {scheme} | {len(mine)} | {sum(r['queries'] for r in mine)} | {sum(r['refused'] for r in mine)} | "
              + " | ".join(cells) + f" | {100 * t.mean_diff:+.1f} (p {t.p_value:.3g}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
