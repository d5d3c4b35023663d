"""Constrained-decoding benchmark (issues #3, #18): `python -m genretr.bench decoding [--quick] [--device cpu|cuda]
[--compile] [--threads N] [--out DIR]`.

Measures in one run, on random-weight `T5PrefixDecoder`s and random fixed-length code identifiers:

* q/s of (a) HF generate + the Python dict-trie `prefix_allowed_tokens_fn` (the peers' method), in fp32
  and with the model in bf16, (b) HF generate + `TrieLogitsProcessor`, (c) the genretr engine, with its
  model step in fp32 and in bf16, (d) the engine unconstrained, for a GENIUS-like decoder (d=512, 6 layers,
  30 prefix vectors, 9 codes: 3-way then 8 x 4096-way) and a CART-like one (d=256, 3 layers, 4 codes of
  128), batch 32/128, beams 10/30/50, corpora 1K..1M.  Decoding only (no item mapping).  HF is timed on at
  most `--hf-queries` queries per setting (its effective batch is then that number; see `queries` /
  `batch_effective`); nothing is extrapolated; a run shorter than 1 s (0.5 s with --quick) is repeated up
  to 5 times and the median reported;
* the constraint's own per-step cost at 256 queries x 50 beams (Python trie vs ours);
* faiss IndexFlatIP (512-d) q/s over the same corpus sizes and its crossover with the engine;
* measured matmul GFLOP/s (fp32 and bf16) and each decoder's FLOPs per query (engine vs HF rows);
* trie build time and memory per corpus size; bytes per item per identifier scheme;
* issue #18's budgets, PASS/MISS: engine (bf16 step) >= 5x HF + Python trie fp32 and >= 2x the same with
  the model in bf16 (beam 30, CART-like and GENIUS-like); fp32 engine >= 70% of the fp32 matmul peak.

bf16 (the engine's bf16 step, HF with its model in bf16, the bf16 matmul peak) is timed only where the device
multiplies bf16 natively, or when `--dtypes fp32,bf16` asks; where it is not timed, its budgets read n/a.
`--device cuda` runs everything on the GPU; `--compile` wraps the engine's step in `torch.compile`
(CUDA graphs on a GPU).  A timed engine search is one batch, or `--queries N` queries in batches of each batch
size (a search's KV cache is made once, its steps' activations freed and made again: how glibc's malloc starts
matters there, `genretr.heap.malloc_at_ceiling`; the header says which).  Writes CSVs and decoding.png under
`--out` (default bench_out/) and prints the tables.  Helpers: `genretr.bench.decoding_sections` (measurements),
`genretr.bench.decoding_report` (outputs).
"""
from __future__ import annotations

import copy
import json
import statistics
import time
from pathlib import Path

import torch

from genretr.bench.decoding_report import budgets, plot, print_table, targets, write_csv
from genretr.bench.decoding_sections import (SHAPES, build_model, code_vocab, constraint_cost, crossover, dict_trie,
                                             faiss_qps, identifier_bytes, ints, matmul_gflops, measure, query_flops,
                                             random_ids, rss_mb, timed)

FULL = dict(shapes="genius,cart", corpus="1000,10000,100000,1000000", batches="32,128", beams="10,30,50",
            hf_queries={"genius": 32, "cart": 128, "tiny": 128}, constraint_corpus=100_000, faiss_queries=512)
QUICK = dict(shapes="genius,cart", corpus="1000,10000", batches="32", beams="10,30",
             hf_queries={"genius": 8, "cart": 16, "tiny": 16}, constraint_corpus=10_000, faiss_queries=256)


def add_arguments(p):
    p.add_argument("--quick", action="store_true", help="a small subset (a few minutes) for development / CI smoke")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--compile", action="store_true", help="torch.compile the engine's step (CUDA graphs on a GPU)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of --compile (eager: trace only)")
    p.add_argument("--dtypes", default=None, help="comma list of fp32, bf16 (default: bf16 where the device has it)")
    p.add_argument("--threads", type=int, default=None, help="torch / faiss intra-op threads (default: as is)")
    p.add_argument("--out", default="bench_out")
    p.add_argument("--shapes", default=None, help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--corpus", default=None, help="comma list of corpus sizes (identifiers)")
    p.add_argument("--batches", default=None, help="comma list of batch sizes")
    p.add_argument("--beams", default=None, help="comma list of beam sizes")
    p.add_argument("--queries", type=int, default=None,
                   help="queries per timed engine search, in batches of each batch size (default: one batch)")
    p.add_argument("--hf-queries", type=int, default=None, help="cap on the queries HF is timed on per setting")
    p.add_argument("--constraint-corpus", type=int, default=None, help="corpus size of the per-step constraint cost")
    p.add_argument("--constraint-queries", type=int, default=256)
    p.add_argument("--constraint-beams", type=int, default=50)
    p.add_argument("--skip", default="", help="comma list of sections to skip: qps,hf,constraint,faiss,bytes")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from genretr.bench import timed_dtypes
    from genretr.decoding.csr_trie import CSRTrie
    from genretr.decoding.engine import as_dtype, beam_search, search_plan
    from genretr.decoding.hf import hf_generate
    from genretr.heap import malloc_at_ceiling

    cfg = dict(QUICK if args.quick else FULL)
    shapes = (args.shapes or cfg["shapes"]).split(",")
    sizes = ints(args.corpus or cfg["corpus"])
    batches = ints(args.batches or cfg["batches"])
    beam_list = ints(args.beams or cfg["beams"])
    constraint_n = args.constraint_corpus or min(cfg["constraint_corpus"], max(sizes))
    skip = set(filter(None, args.skip.split(",")))
    if args.queries is not None and args.queries < max(batches):
        raise SystemExit(f"genretr bench decoding: --queries {args.queries} is below the largest batch, "
                         f"{max(batches)}: a search of N queries runs in batches of each batch size")
    device = torch.device(args.device)
    dtypes, why = timed_dtypes(args.dtypes, args.device)
    step_dtypes = [str(as_dtype(d)).removeprefix("torch.") for d in dtypes]  # float32, bfloat16
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    # --compile: inductor (+ CUDA graphs on a GPU, engine.compile_options); another backend as given, full graph
    compile_ = (True if args.compile_backend == "inductor" else {"backend": args.compile_backend, "fullgraph": True}
                ) if args.compile else False
    print(f"genretr bench decoding: device={device} threads={torch.get_num_threads()} shapes={shapes} "
          f"corpus={sizes} batches={batches} beams={beam_list} queries={args.queries or 'one batch'} "
          f"compile={compile_} malloc={'at the ceiling' if malloc_at_ceiling() else 'as is'} "
          f"{'(quick)' if args.quick else ''}; {why}", flush=True)

    reps = 3 if args.quick else 10
    min_s = 0.5 if args.quick else 1.0  # a run shorter than this is repeated (median reported)
    gemm = [dict(what="square 2048", dtype=dt, gflops=matmul_gflops(device, 2048, 2048, 2048, reps, getattr(torch, dt)))
            for dt in step_dtypes]
    for shape in shapes:
        d = SHAPES[shape]["d_model"]
        rows = max(batches) * max(beam_list)
        for dt in step_dtypes:
            gemm.append(dict(what=f"{shape} FFN ({rows}x{d} @ {d}x{2 * SHAPES[shape]['d_ff']})", dtype=dt,
                             gflops=matmul_gflops(device, rows, d, 2 * SHAPES[shape]["d_ff"], reps, getattr(torch, dt))))
    print_table("matmul GFLOP/s (measured)", gemm, ["what", "dtype", "gflops"])

    qps_rows, trie_rows, constraint_rows, flop_rows = [], [], [], []
    for shape in shapes:
        s = SHAPES[shape]
        _, vocab = code_vocab(s["codes"])
        model = build_model(shape, vocab, device)
        # the peers' method with the model itself in bf16 (HF casts the logits to float32 before its log-softmax)
        model_bf16 = (copy.deepcopy(model).to(torch.bfloat16) if "bf16" in dtypes and s.get("model") != "cart"
                      else None)
        T = len(s["codes"]) + 1
        hf_cap = args.hf_queries or cfg["hf_queries"].get(shape, 16)
        zgen = torch.Generator().manual_seed(args.seed)
        cart = s.get("model") == "cart"
        if cart:  # queries are word ids
            zall = torch.randint(2, s["src_vocab"], (max(max(batches), hf_cap, args.queries or 0), s["src_len"]),
                                 generator=zgen)
            zall = zall.to(device)
        else:
            zall = torch.randn(max(max(batches), hf_cap, args.queries or 0), s["input_dim"], generator=zgen).to(device)
        warm = zall[:2]
        # warm-up every method once (allocators, MKL, HF generate setup)
        wseqs = random_ids(200, s["codes"], args.seed)
        wcsr, wdict = CSRTrie.from_sequences(wseqs, vocab), dict_trie(wseqs)
        for dt in step_dtypes:
            beam_search(model, warm, wcsr, 2, step_dtype=dt)
        beam_search(model, warm, None, 2, max_len=T)
        if "hf" not in skip and "qps" not in skip and not cart:
            hf_generate(model, warm, 2, T, wdict, mode="python")
            if model_bf16 is not None:
                hf_generate(model_bf16, warm, 2, T, wdict, mode="python")
            hf_generate(model, warm, 2, T, wcsr, mode="processor")
        unconstrained_done = set()
        for n in sizes:
            seqs = random_ids(n, s["codes"], args.seed + n)
            t_csr, csr = timed(lambda: CSRTrie.from_sequences(seqs, vocab), "cpu")
            r0 = rss_mb()
            # the Python dict trie only where a section uses it (48 s and 3.6 GB at 1M GENIUS identifiers)
            need_dict = ("hf" not in skip and "qps" not in skip and not cart) or (
                "constraint" not in skip and n == constraint_n and not cart)
            t_dict, dtrie = timed(lambda: dict_trie(seqs), "cpu") if need_dict else (float("nan"), None)
            dict_mb = rss_mb() - r0 if need_dict else float("nan")
            trie_rows.append(dict(shape=shape, corpus=n, sequences=csr.num_sequences, nodes=csr.num_nodes,
                                  csr_build_s=t_csr, csr_mb=csr.memory_bytes() / 2**20,
                                  csr_bytes_per_id=csr.memory_bytes() / n, dict_build_s=t_dict,
                                  dict_rss_growth_mb=dict_mb))
            print(f"[{time.perf_counter() - t_start:6.0f}s] {shape} {n} ids: CSR {t_csr:.2f}s "
                  f"{csr.memory_bytes() / 2**20:.1f} MiB, dict trie {t_dict:.2f}s (+{dict_mb:.0f} MB RSS)", flush=True)
            if "constraint" not in skip and n == constraint_n and not cart:
                constraint_rows += constraint_cost(shape, seqs, csr, dtrie, vocab, args.constraint_queries,
                                                   args.constraint_beams, device, args.seed)
            for batch in batches:
                for beams in beam_list:
                    if batch == batches[0] and not cart:  # rows per step: the engine's plan; HF `beams`
                        slots = [S for S, _, _ in search_plan(csr, min(beams, csr.num_sequences), T, vocab)]
                        flop_rows.append(dict(shape=shape, corpus=n, beams=beams,
                                              engine_gflop_per_query=query_flops(s, vocab, T, slots, 1) / 1e9,
                                              hf_gflop_per_query=query_flops(s, vocab, T, [beams] * T, beams) / 1e9))
                    setting = dict(shape=shape, batch=batch, beams=beams, corpus=n)
                    if "qps" in skip:
                        continue
                    z = zall[:args.queries or batch]
                    for method, step_dtype in [("engine", "float32"), ("engine_bf16", "bfloat16")]:
                        if step_dtype not in step_dtypes:
                            continue
                        search = lambda: beam_search(model, z, csr, beams, batch_size=batch,  # noqa: E731
                                                     step_dtype=step_dtype, compile=compile_)
                        if compile_:
                            search()  # compile this (batch, beams) outside the timing
                        dt, runs = measure(search, device, min_s)
                        qps_rows.append(dict(**setting, method=method, queries=len(z), batch_effective=batch,
                                             runs=runs, seconds=dt, q_per_s=len(z) / dt))
                    if (batch, beams) not in unconstrained_done:
                        unconstrained_done.add((batch, beams))
                        dt, runs = measure(lambda: beam_search(model, z, None, beams, max_len=T, batch_size=batch),
                                           device, min_s)
                        qps_rows.append(dict(**{**setting, "corpus": "-"}, method="unconstrained", queries=len(z),
                                             batch_effective=batch, runs=runs, seconds=dt, q_per_s=len(z) / dt))
                    if "hf" not in skip and not cart:
                        zh = zall[:min(batch, hf_cap)]
                        for method, m, trie, mode in (("hf_python", model, dtrie, "python"),
                                                      ("hf_python_bf16", model_bf16, dtrie, "python"),
                                                      ("hf_processor", model, csr, "processor")):
                            if m is None:  # bf16 not timed
                                continue
                            dt, runs = measure(lambda: hf_generate(m, zh, beams, T, trie, mode=mode), device, min_s)
                            qps_rows.append(dict(**setting, method=method, queries=len(zh), batch_effective=len(zh),
                                                 runs=runs, seconds=dt, q_per_s=len(zh) / dt))
                    line = ", ".join(f"{r['method']} {r['q_per_s']:.1f}" for r in qps_rows
                                     if {k: r[k] for k in ("shape", "batch", "beams")} ==
                                     {k: setting[k] for k in ("shape", "batch", "beams")}
                                     and r["corpus"] in (n, "-"))
                    print(f"[{time.perf_counter() - t_start:6.0f}s] {shape} n={n} batch={batch} beams={beams}: "
                          f"q/s {line}", flush=True)
            del dtrie, csr, seqs
        del model, model_bf16

    # speedups vs the peers' method at the same setting (model in fp32 / in bf16)
    for base_method in ("hf_python", "hf_python_bf16"):
        ref = {(r["shape"], r["batch"], r["beams"], r["corpus"]): r["q_per_s"] for r in qps_rows
               if r["method"] == base_method}
        for r in qps_rows:
            base = ref.get((r["shape"], r["batch"], r["beams"], r["corpus"]))
            r[f"x_vs_{base_method}"] = r["q_per_s"] / base if base else float("nan")

    faiss_rows = [] if "faiss" in skip else faiss_qps(sizes, batches, 512, cfg["faiss_queries"], args.threads,
                                                      args.seed)
    cross_rows = []
    for shape in shapes:
        for batch in batches:
            for beams in beam_list:
                eng = [r["q_per_s"] for r in qps_rows if r["method"] == "engine" and r["shape"] == shape
                       and r["batch"] == batch and r["beams"] == beams]
                if eng and faiss_rows:
                    e = statistics.mean(eng)
                    cross_rows.append(dict(shape=shape, batch=batch, beams=beams, engine_q_per_s=e,
                                           faiss_crossover_corpus=crossover(e, [f for f in faiss_rows
                                                                                if f["batch"] == batch])))
    gf = max(g["gflops"] for g in gemm if g["dtype"] == "float32")  # the fp32 peak measured in this run
    for r in flop_rows:
        e = [q["q_per_s"] for q in qps_rows if q["method"] == "engine" and q["shape"] == r["shape"]
             and q["corpus"] == r["corpus"] and q["beams"] == r["beams"] and q["batch"] == batches[0]]
        r["roofline_q_per_s"] = gf / r["engine_gflop_per_query"]
        r["engine_q_per_s"] = e[0] if e else float("nan")
        r["engine_gflop_s_achieved"] = r["engine_q_per_s"] * r["engine_gflop_per_query"]
    bytes_rows = [] if "bytes" in skip else identifier_bytes(sizes, args.seed)

    # ------------------------------------------------------------------ outputs
    write_csv(out / "decoding_qps.csv", qps_rows)
    write_csv(out / "decoding_constraint.csv", constraint_rows)
    write_csv(out / "decoding_trie.csv", trie_rows)
    write_csv(out / "decoding_faiss.csv", faiss_rows)
    write_csv(out / "decoding_crossover.csv", cross_rows)
    write_csv(out / "decoding_flops.csv", flop_rows)
    write_csv(out / "decoding_gemm.csv", gemm)
    write_csv(out / "decoding_bytes.csv", bytes_rows)

    print_table("q/s (decoding only; HF timed on `queries` queries)", qps_rows,
                ["shape", "batch", "beams", "corpus", "method", "queries", "runs", "seconds", "q_per_s",
                 "x_vs_hf_python", "x_vs_hf_python_bf16"])
    print_table("constraint per step (ms)", constraint_rows,
                ["shape", "depth", "rows", "fanout_max", "python_trie_ms", "trie_logits_processor_ms",
                 "engine_constraint_ms", "speedup_engine", "speedup_processor"])
    print_table("trie build and memory", trie_rows, ["shape", "corpus", "sequences", "nodes", "csr_build_s", "csr_mb",
                                                     "csr_bytes_per_id", "dict_build_s", "dict_rss_growth_mb"])
    print_table("faiss IndexFlatIP 512-d", faiss_rows, ["corpus", "batch", "queries", "q_per_s"])
    print_table("faiss crossover (corpus size where flat search gets slower than the engine)", cross_rows,
                ["shape", "batch", "beams", "engine_q_per_s", "faiss_crossover_corpus"])
    print_table(f"FLOPs per query (roofline at {gf:.0f} GFLOP/s)", flop_rows,
                ["shape", "corpus", "beams", "engine_gflop_per_query", "hf_gflop_per_query", "roofline_q_per_s",
                 "engine_q_per_s", "engine_gflop_s_achieved"])
    print_table("bytes per item per identifier scheme", bytes_rows,
                ["scheme", "corpus", "tokens_per_id", "table_bytes_per_item", "trie_bytes_per_item", "nodes_per_item"])

    summary = targets(qps_rows, constraint_rows, trie_rows, sizes)
    print_table("targets", summary, ["target", "measured", "met"])
    budget_rows = budgets(qps_rows, gemm, flop_rows, device, bf16="bf16" in dtypes)
    print("\n== budgets (issue #18)")
    for b in budget_rows:
        print(f"{b['status']:>8}  {b['budget']}: {b['measured']}")
    (out / "decoding_summary.json").write_text(json.dumps(
        {"device": str(device), "threads": torch.get_num_threads(), "quick": bool(args.quick), "compile": bool(args.compile),
         "dtypes": dtypes,
         "targets": summary, "budgets": budget_rows, "seconds": time.perf_counter() - t_start}, indent=2, default=str))
    plot(out / "decoding.png", qps_rows, faiss_rows, constraint_rows, batches, beam_list)
    print(f"\nwrote {out}/decoding_*.csv, decoding.png in {time.perf_counter() - t_start:.0f}s")
    return 0



if __name__ == "__main__":  # pragma: no cover
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))
