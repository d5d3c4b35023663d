"""Scale benchmark (issue 16): `python -m genretr.bench scale [--sizes 10000,100000] [--quick]`.

Shapes at growing sizes through dataset -> encode -> identify (GENIUS and CART codes) -> index -> evaluate
(the two-tower search of t2i and of i2t, whose pool holds every test caption: 5 per image; 1,000 queries per
task at every size, so that its growth is the pool's: all queries against all items grows as Q x N by nature),
each size in its own process.  `--text-pool N` adds one run whose i2t test pool holds N captions (N/5 test images, 2,000
training images, the first 2,000 test images as queries): the 1M-candidate text pool of issue 16.
Per stage it prints the wall time and the peak resident memory (Linux: VmHWM, reset before each stage
through /proc/self/clear_refs; elsewhere the process's running maximum) and, sampled, the peak of its
anonymous part (without the file pages of the memory-mapped images and vectors), then how each stage's time
grows against the size.  Budgets: peak RSS <= 6 GB at the largest size, no stage growing faster than
linearly, the 100k-image run within 30 min.  The models train one epoch each: this measures the pipeline's
scaling, not accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from genretr.hardware import release_freed_memory, status_mb

STAGES = ("dataset", "encode", "identify_genius", "identify_cart", "index", "evaluate")
BUDGET_RSS_GB, BUDGET_100K_MIN = 6.0, 30.0
TEXT_POOL_TRAIN, TEXT_POOL_QUERIES = 2000, 2000
EVAL_QUERIES = 1000  # per task at every size: evaluate's growth is the pool's (all queries x all items is Q x N)


def add_arguments(p):
    p.add_argument("--sizes", default="10000,100000",
                   help="shapes training images per run, comma-separated ('' with --text-pool: the pool run alone)")
    p.add_argument("--quick", action="store_true", help="sizes 200,800: a smoke run in about a minute")
    p.add_argument("--text-pool", type=int, default=0, help="also a run with an i2t pool of this many captions")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    p.add_argument("--out", default="bench_out/scale")
    p.add_argument("--resume", action="store_true",
                   help="keep the cache an interrupted run left (finished stages are reused, MiniLM's features "
                        "continue from their shards): the figures then cover this process's part only")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the child process of one size
    p.add_argument("--pool", type=int, default=0, help=argparse.SUPPRESS)  # ... of the text-pool run


class AnonPeak:
    """The largest anonymous RSS (RssAnon: heap and tensors, not the file pages of memory-mapped artifacts, which
    VmHWM also counts) since `reset`, sampled every 20 ms by a daemon thread."""

    def __init__(self):
        import threading

        self.peak, self.generation, self.lock = 0.0, 0, threading.Lock()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while True:
            generation, mb = self.generation, status_mb("RssAnon") or 0.0
            with self.lock:  # a sample taken before a reset never raises the new stage's peak
                if generation == self.generation:
                    self.peak = max(self.peak, mb)
            time.sleep(0.02)

    def reset(self) -> None:
        with self.lock:
            self.generation += 1
            self.peak = status_mb("RssAnon") or 0.0


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mb() -> float:
    mb = status_mb("VmHWM")
    return mb if mb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def overrides(n: int, cache: Path, threads: int, text_pool: int = 0) -> list[str]:
    """`n` training images (t2i and i2t); with `text_pool`, i2t only over a pool of that many test captions."""
    common = ["logger=none", "progress=false", f"threads={threads or 'auto'}", "encoder.fit.max_epochs=1",
              f"paths.cache_dir={cache}"]
    if text_pool:
        return [*common, f"dataset.splits={{train:{n},val:5,test:{max(1, text_pool // 5)}}}", "dataset.tasks=[i2t]",
                "eval.tasks=[i2t]", f"eval.max_queries={TEXT_POOL_QUERIES}"]
    test = max(10, n // 10)
    return [*common, f"dataset.splits={{train:{n},val:{max(5, n // 200)},test:{test}}}", "dataset.tasks=[t2i,i2t]",
            "eval.tasks=[t2i,i2t]", f"eval.max_queries={EVAL_QUERIES}"]


def one_size(n: int, out: Path, threads: int, text_pool: int = 0, resume: bool = False) -> dict:
    """Every stage at `n` training images (and a `text_pool`, see `overrides`) in this process:
    {stage: {seconds, peak_mb}} plus the counts.  `resume`: from what an interrupted run left in the cache."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from genretr.bench.training import CONF
    from genretr.hardware import auto_threads
    from genretr.pipeline import Pipeline

    torch.set_num_threads(auto_threads(threads or None))
    name = f"{n}_pool{text_pool}" if text_pool else str(n)
    run_dir, rows, cache = out / f"run_{name}", {}, out / f"cache_{name}"
    tasks = ("i2t",) if text_pool else ("t2i", "i2t")
    if not resume:
        shutil.rmtree(cache, ignore_errors=True)  # every stage runs: nothing from an earlier bench

    def pipeline(*extra):
        """A Pipeline of conf/config.yaml with the Hydra runtime values a real run has."""
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[*overrides(n, cache, threads, text_pool), *extra],
                          return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir, cfg.hydra.runtime.cwd, cfg.hydra.job.num = str(run_dir), os.getcwd(), 0
        HydraConfig.instance().set_config(cfg)
        return Pipeline(cfg, run_dir)

    anon = AnonPeak()

    def timed(stage, work, *args):
        release_freed_memory()  # as Pipeline.run does between stages
        _reset_peak()
        anon.reset()
        start = time.perf_counter()
        result = work(*args)
        rows[stage] = {"seconds": round(time.perf_counter() - start, 2), "peak_mb": round(_peak_mb(), 1),
                       "peak_anon_mb": round(anon.peak, 1)}
        print(f"  {name:>9} images  {stage:<16} {rows[stage]['seconds']:>9.1f} s  {rows[stage]['peak_mb']:>9.0f} MB"
              f"  (anon {rows[stage]['peak_anon_mb']:.0f} MB)", file=sys.stderr, flush=True)
        return result

    base = pipeline("method=embedding")
    ds = timed("dataset", base.dataset)
    timed("encode", base.encode, ds)
    del ds  # each run below loads the dataset and embeddings again from the cache: one copy alive, as in a run

    def upstream(pipe):  # another identifier's run: the dataset and embeddings again, from the cache
        reused = pipe.dataset()
        return reused, pipe.encode(reused)

    genius = pipeline("method=generative", "identifier=genius", "identifier.epochs=1")
    timed("identify_genius", genius.identify, *upstream(genius))
    cart = pipeline("method=generative", "identifier=cart", "identifier.epochs=1", "identifier.warmup_epochs=0.5")
    ds, emb = upstream(cart)
    table = timed("identify_cart", cart.identify, ds, emb)
    timed("index", cart.index, ds, table)
    metrics = timed("evaluate", base.evaluate, ds, emb)
    pools = {t: len(ds.splits["test"].pools[t]) for t in tasks}
    return {"images": n, "text_pool": text_pool, "resumed": resume, "items": len(ds.items), "test_pools": pools,
            "stages": rows, "R@10": {t: round(m["R@10"], 4) for t, m in metrics.items()}}


def growth(results: list[dict]) -> list[dict]:
    """Per stage and consecutive sizes: time ratio / size ratio (<= 1: no faster than linear)."""
    out = []
    for a, b in zip(results, results[1:]):
        size = b["images"] / a["images"]
        for stage in STAGES:
            ta, tb = a["stages"][stage]["seconds"], b["stages"][stage]["seconds"]
            out.append({"stage": stage, "from": a["images"], "to": b["images"], "size_x": round(size, 2),
                        "time_x": round(tb / max(ta, 1e-3), 2), "vs_linear": round(tb / max(ta, 1e-3) / size, 2)})
    return out


def child(n: int, out: Path, threads: int, text_pool: int = 0, resume: bool = False) -> dict | None:
    """One size (or the text-pool run) in its own process, so that peak memory is its own."""
    cmd = [sys.executable, "-m", "genretr.bench", "scale", "--one", str(n), "--pool", str(text_pool), "--out",
           str(out), "--threads", str(threads), *(["--resume"] if resume else [])]
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        what = f"the {text_pool}-caption pool run" if text_pool else f"the {n}-image run"
        print(f"genretr bench scale: {what} failed (exit {done.returncode})", file=sys.stderr)
        return None
    return {**json.loads(done.stdout.strip().splitlines()[-1]),
            "wall_minutes": round((time.perf_counter() - start) / 60, 2)}


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.one is not None:  # the child: one size, its figures as one JSON line on stdout
        print(json.dumps(one_size(args.one, out, args.threads, args.pool, args.resume)))
        return 0
    sizes = [200, 800] if args.quick else [int(s) for s in str(args.sizes).split(",") if s.strip()]
    results = []
    for n in sizes:
        results.append(child(n, out, args.threads, resume=args.resume))
        if results[-1] is None:
            return 1
    pool = child(TEXT_POOL_TRAIN, out, args.threads, args.text_pool, args.resume) if args.text_pool else None
    if args.text_pool and pool is None:
        return 1
    report = {"results": results, "growth": growth(results), "text_pool": pool}
    (out / "scale.json").write_text(json.dumps(report, indent=1))
    print("| images | items | test pools (t2i / i2t) | stage | seconds | peak RSS MB | peak anon MB |\n"
          "|---:|---:|---|---|---:|---:|---:|")
    for r in results + ([pool] if pool else []):
        label = f"{r['images']} + i2t pool {r['text_pool']}" if r.get("text_pool") else r["images"]
        pools = " / ".join(str(v) for v in r["test_pools"].values())
        for stage in STAGES:
            s = r["stages"][stage]
            print(f"| {label} | {r['items']} | {pools} | {stage} | {s['seconds']} | {s['peak_mb']:.0f} "
                  f"| {s.get('peak_anon_mb', 0):.0f} |")
    print("\n| stage | sizes | size x | time x | time x / size x |\n|---|---|---:|---:|---:|")
    for g in report["growth"]:
        print(f"| {g['stage']} | {g['from']} -> {g['to']} | {g['size_x']} | {g['time_x']} | {g['vs_linear']} |")
    resumed = " (resumed: figures of this process's part only)" if args.resume else ""
    if results:
        largest = results[-1]
        peak = max(s["peak_mb"] for s in largest["stages"].values()) / 1024
        worst = max((g["vs_linear"] for g in report["growth"]), default=None)
        timed = {r["images"]: r["wall_minutes"] for r in results}
        if 100_000 in timed:
            print(f"100k-image run: {timed[100_000]} min ({'PASS' if timed[100_000] <= BUDGET_100K_MIN else 'MISS'} "
                  f"<= {BUDGET_100K_MIN:.0f} min){resumed}")
        print(f"\npeak RSS at {largest['images']} images: {peak:.2f} GB "
              f"({'PASS' if peak <= BUDGET_RSS_GB else 'MISS'} <= {BUDGET_RSS_GB} GB); "
              f"worst growth vs linear: {worst} ({'PASS' if worst is not None and worst <= 1.2 else 'MISS'} <= 1.2, "
              f"noise allowed); wall per size (min): {[r['wall_minutes'] for r in results]}{resumed}")
    if pool:
        pool_peak = max(s["peak_mb"] for s in pool["stages"].values()) / 1024
        print(f"i2t pool of {pool['test_pools']['i2t']} captions: peak RSS {pool_peak:.2f} GB "
              f"({'PASS' if pool_peak <= BUDGET_RSS_GB else 'MISS'} <= {BUDGET_RSS_GB} GB), "
              f"{pool['wall_minutes']} min{resumed}")
    return 0
