"""Constrained-decoding benchmark (issue #3): `python -m genretr.bench decoding [--quick] [--device cpu|cuda]
[--threads N] [--out DIR]`.

Measures in one run, on random-weight `T5PrefixDecoder`s and random fixed-length code identifiers:

* q/s of (a) HF generate + the Python dict-trie `prefix_allowed_tokens_fn` (the peers' method),
  (b) HF generate + `TrieLogitsProcessor`, (c) the genretr engine, (d) the engine unconstrained, for a
  GENIUS-like decoder (d=512, 6 layers, 30 prefix vectors, 9 codes: 3-way then 8 x 4096-way) and a
  CART-like one (d=256, 3 layers, 4 codes of 128), batch 32/128, beams 10/30/50, corpora 1K..1M.
  Decoding only (no item mapping).  HF is timed on at most `--hf-queries` queries per setting (its
  effective batch is then that number; see `queries` / `batch_effective`); nothing is extrapolated;
  a run shorter than 1 s (0.5 s with --quick) is repeated up to 5 times and the median reported;
* the constraint's own per-step cost at 256 queries x 50 beams (Python trie vs ours);
* faiss IndexFlatIP (512-d) q/s over the same corpus sizes and its crossover with the engine;
* measured matmul GFLOP/s and each decoder's FLOPs per query (engine vs HF rows);
* trie build time and memory per corpus size; bytes per item per identifier scheme.

Writes CSVs and decoding.png under `--out` (default bench_out/) and prints the tables.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

SHAPES = {
    "genius": dict(d_model=512, num_layers=6, num_heads=8, d_ff=2048, prefix_len=30, prefix_hidden=1024,
                   input_dim=512, codes=(3,) + (4096,) * 8),
    "cart": dict(d_model=256, num_layers=3, num_heads=4, d_ff=1024, prefix_len=8, prefix_hidden=1024, input_dim=512,
                 codes=(128,) * 4),
    "tiny": dict(d_model=32, num_layers=1, num_heads=2, d_ff=64, prefix_len=2, prefix_hidden=32, input_dim=16,
                 codes=(8,) * 3),
    # CART's own decoder (genretr.backbones.cart: 3 encoder layers over ~12 query words, 3 decoder layers with
    # coarse-to-fine fusion); no HF generate path exists for it, so only the engine rows are measured
    "cart_fusion": dict(model="cart", d_model=256, encoder_layers=3, decoder_layers=3, num_heads=4, d_ff=1024,
                        src_len=12, src_vocab=5000, codes=(128,) * 4),
    "tiny_cart": dict(model="cart", d_model=32, encoder_layers=1, decoder_layers=1, num_heads=2, d_ff=64, src_len=6,
                      src_vocab=50, codes=(8,) * 3),
}
FULL = dict(shapes="genius,cart", corpus="1000,10000,100000,1000000", batches="32,128", beams="10,30,50",
            hf_queries={"genius": 32, "cart": 128, "tiny": 128}, constraint_corpus=100_000, faiss_queries=512)
QUICK = dict(shapes="genius,cart", corpus="1000,10000", batches="32", beams="10,30",
             hf_queries={"genius": 8, "cart": 16, "tiny": 16}, constraint_corpus=10_000, faiss_queries=256)
METHODS = ["hf_python", "hf_processor", "engine", "unconstrained"]


def add_arguments(p):
    p.add_argument("--quick", action="store_true", help="a small subset (< 3 min) for development / CI smoke")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch / faiss intra-op threads (default: as is)")
    p.add_argument("--out", default="bench_out")
    p.add_argument("--shapes", default=None, help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--corpus", default=None, help="comma list of corpus sizes (identifiers)")
    p.add_argument("--batches", default=None, help="comma list of batch sizes")
    p.add_argument("--beams", default=None, help="comma list of beam sizes")
    p.add_argument("--hf-queries", type=int, default=None, help="cap on the queries HF is timed on per setting")
    p.add_argument("--constraint-corpus", type=int, default=None, help="corpus size of the per-step constraint cost")
    p.add_argument("--constraint-queries", type=int, default=256)
    p.add_argument("--constraint-beams", type=int, default=50)
    p.add_argument("--skip", default="", help="comma list of sections to skip: qps,hf,constraint,faiss,bytes")
    p.add_argument("--seed", type=int, default=0)


# ---------------------------------------------------------------------------------------------------- helpers


def ints(s) -> list[int]:
    return [int(float(x)) for x in str(s).split(",") if x]


def code_vocab(codes):
    """Token offset of each codebook size (levels of equal size share tokens) and the vocabulary size."""
    offsets, nxt = {}, 2
    for c in codes:
        if c not in offsets:
            offsets[c], nxt = nxt, nxt + c
    return offsets, nxt


def random_ids(n: int, codes, seed: int) -> np.ndarray:
    """(n, len(codes) + 1) int32 code identifiers + EOS (random, so a few may collide)."""
    rng = np.random.default_rng(seed)
    offsets, _ = code_vocab(codes)
    cols = [rng.integers(0, c, n, dtype=np.int32) + offsets[c] for c in codes] + [np.ones(n, np.int32)]
    return np.stack(cols, 1)


def build_model(shape: str, vocab: int, device):
    from genretr.backbones.t5_prefix import T5PrefixDecoder

    s = SHAPES[shape]
    torch.manual_seed(0)
    if s.get("model") == "cart":
        from genretr.backbones.cart import CartSeq2Seq

        m = CartSeq2Seq(vocab_size=vocab, src_vocab_size=s["src_vocab"], d_model=s["d_model"], heads=s["num_heads"],
                        d_ff=s["d_ff"], dropout=0.0, encoder_layers=s["encoder_layers"],
                        decoder_layers=s["decoder_layers"], max_src_len=s["src_len"])
        return m.to(device).eval()
    m = T5PrefixDecoder(vocab_size=vocab, input_dim=s["input_dim"], d_model=s["d_model"], num_layers=s["num_layers"],
                        num_heads=s["num_heads"], d_ff=s["d_ff"], dropout=0.0, prefix_len=s["prefix_len"],
                        prefix_hidden=s["prefix_hidden"])
    return m.to(device).eval()


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def measure(fn, device, min_seconds: float = 1.0, max_runs: int = 5):
    """(median seconds per run, runs): a short run is repeated until `min_seconds` have been spent."""
    times = []
    while True:
        times.append(timed(fn, device)[0])
        if sum(times) >= min_seconds or len(times) >= max_runs:
            return statistics.median(times), len(times)


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def dict_trie(seqs: np.ndarray):
    """The Python dict trie (genretr.decoding.trie.Trie) over `seqs`: the peers' data structure."""
    from genretr.decoding.trie import Trie

    return Trie(SimpleNamespace(sequences=seqs))


def fmt(v, spec=".3g"):
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return format(v, spec)
    return str(v)


def print_table(title: str, rows: list[dict], cols: list[str]):
    print(f"\n== {title}")
    if not rows:
        print("(none)")
        return
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for x in cells:
        print("  ".join(v.rjust(w) for v, w in zip(x, widths)))


def write_csv(path: Path, rows: list[dict]):
    if not rows:
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


# ---------------------------------------------------------------------------------------------------- sections


def matmul_gflops(device, rows: int, d: int, out: int, reps: int = 10) -> float:
    x, w = torch.randn(rows, d, device=device), torch.randn(out, d, device=device)
    for _ in range(2):
        F.linear(x, w)
    dt, _ = timed(lambda: [F.linear(x, w) for _ in range(reps)], device)
    return 2 * rows * d * out * reps / dt / 1e9


def row_step_flops(s, vocab: int, t: int) -> float:
    d, L, dff, P = s["d_model"], s["num_layers"], s["d_ff"], s["prefix_len"]
    inner = d  # d_kv * heads
    proj = 2 * (d * 3 * inner + inner * d + d * inner + inner * d + d * 2 * dff + dff * d)
    attn = 4 * (t + 1) * inner + 4 * P * inner
    return L * (proj + attn) + 2 * d * vocab


def query_flops(s, vocab: int, T: int, slots: list[int], kv_copies: int) -> float:
    d, L, P, h = s["d_model"], s["num_layers"], s["prefix_len"], s["prefix_hidden"]
    prefix = 2 * (s["input_dim"] * h + h * P * d)
    cross_kv = 2 * P * d * 2 * d * L * kv_copies
    return prefix + cross_kv + sum(n * row_step_flops(s, vocab, t) for t, n in enumerate(slots[:T]))


def constraint_cost(shape, seqs, csr, dtrie, vocab, nq, beams, device, seed):
    """Per depth: seconds of one step's constraint for nq x beams rows (Python trie vs ours)."""
    from transformers import PrefixConstrainedLogitsProcessor

    from genretr.decoding.engine import TrieLogitsProcessor, constrained_scores
    from genretr.decoding.hf import prefix_allowed_fn

    rng = np.random.default_rng(seed)
    rows = nq * beams
    out = []
    for t in range(csr.max_len):
        pick = rng.integers(0, len(seqs), rows)
        pref = torch.from_numpy(seqs[pick, :t].astype(np.int64))
        input_ids = torch.cat([torch.zeros(rows, 1, dtype=torch.long), pref], 1).to(device)
        scores = torch.randn(rows, vocab, device=device)
        py = PrefixConstrainedLogitsProcessor(prefix_allowed_fn(dtrie), beams)
        t_py, ref = timed(lambda: py(input_ids, scores), device)
        # ours as HF sees it (in place on a scratch copy, as hf_generate uses it in beam search)
        proc = TrieLogitsProcessor(csr, beams, inplace=True)
        buf = scores.clone()
        assert torch.equal(proc(input_ids, buf), ref), "TrieLogitsProcessor differs from the Python trie"
        t_proc = []
        for _ in range(3):
            buf.copy_(scores)
            t_proc.append(timed(lambda: proc(input_ids, buf), device)[0])
        # the engine's own per-step constraint: the allowed children's scores of every beam, whose trie
        # node it carries from step to step (in place on the step's logits, as in the engine)
        nodes = csr.walk(pref.to(device))
        offset = -scores.logsumexp(-1, keepdim=True)
        t_eng = []
        for _ in range(5):
            buf.copy_(scores)
            t_eng.append(timed(lambda: constrained_scores(csr, nodes, buf, offset, inplace=True), device)[0])
        t_proc, t_eng = statistics.median(t_proc), statistics.median(t_eng[1:])
        out.append(dict(shape=shape, depth=t, rows=rows, fanout_max=int(csr.fanout(nodes).max()),
                        python_trie_ms=1e3 * t_py, trie_logits_processor_ms=1e3 * t_proc,
                        engine_constraint_ms=1e3 * t_eng, speedup_engine=t_py / t_eng,
                        speedup_processor=t_py / t_proc))
    return out


def faiss_qps(sizes, batches, dim, nq, threads, seed):
    import faiss

    if threads:
        faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(seed)
    rows = []
    q = rng.standard_normal((nq, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for n in sizes:
        index = faiss.IndexFlatIP(dim)
        for s in range(0, n, 100_000):
            x = rng.standard_normal((min(100_000, n - s), dim), dtype=np.float32)
            index.add(x / np.linalg.norm(x, axis=1, keepdims=True))
        for b in batches:
            index.search(q[:b], 10)  # warm
            t0 = time.perf_counter()
            for s in range(0, nq, b):
                index.search(q[s:s + b], 10)
            dt = time.perf_counter() - t0
            rows.append(dict(corpus=n, batch=b, queries=nq, seconds=dt, q_per_s=nq / dt))
        del index
    return rows


def crossover(engine_qps: float, faiss_rows: list[dict]):
    """Smallest corpus where faiss flat q/s drops below the engine's (log-log interpolation between
    measured sizes); '>N' / '<N' when outside the measured range."""
    pts = sorted((r["corpus"], r["q_per_s"]) for r in faiss_rows)
    if not pts:
        return "-"
    if pts[0][1] <= engine_qps:
        return f"<={pts[0][0]}"
    for (n0, q0), (n1, q1) in zip(pts, pts[1:]):
        if q1 <= engine_qps:
            f = (math.log(q0) - math.log(engine_qps)) / max(math.log(q0) - math.log(q1), 1e-12)
            return f"{math.exp(math.log(n0) + f * (math.log(n1) - math.log(n0))):.3g}"
    return f">{pts[-1][0]}"


def identifier_bytes(sizes, seed):
    """Bytes per item of each identifier scheme: its IdTable row and its CSR trie."""
    from genretr.decoding.csr_trie import CSRTrie
    from genretr.identifiers.string import StringIdentifier

    rows = []
    for n in sizes:
        schemes = {f"{k}-codes ({'+'.join(f'{c}' for c in dict.fromkeys(SHAPES[k]['codes']))} x "
                   f"{len(SHAPES[k]['codes'])})": random_ids(n, SHAPES[k]["codes"], seed) for k in ("genius", "cart")}
        items = [SimpleNamespace(id=str(i)) for i in range(n)]
        table = StringIdentifier(seed=seed).build(items, None, None)
        schemes["string (GRACE, 3-digit chunks)"] = table.sequences
        for name, seqs in schemes.items():
            trie = CSRTrie.from_sequences(seqs)
            rows.append(dict(scheme=name, corpus=n, tokens_per_id=float((seqs != 0).sum(1).mean()),
                             table_bytes_per_item=seqs.astype(np.int32).nbytes / n,
                             trie_bytes_per_item=trie.memory_bytes() / n,
                             nodes_per_item=trie.num_nodes / n))
    return rows


# ---------------------------------------------------------------------------------------------------- main


def run(args) -> int:
    from genretr.decoding.csr_trie import CSRTrie
    from genretr.decoding.engine import beam_search, hf_generate

    cfg = dict(QUICK if args.quick else FULL)
    shapes = (args.shapes or cfg["shapes"]).split(",")
    sizes = ints(args.corpus or cfg["corpus"])
    batches = ints(args.batches or cfg["batches"])
    beam_list = ints(args.beams or cfg["beams"])
    constraint_n = args.constraint_corpus or min(cfg["constraint_corpus"], max(sizes))
    skip = set(filter(None, args.skip.split(",")))
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    print(f"genretr bench decoding: device={device} threads={torch.get_num_threads()} shapes={shapes} "
          f"corpus={sizes} batches={batches} beams={beam_list} {'(quick)' if args.quick else ''}", flush=True)

    reps = 3 if args.quick else 10
    min_s = 0.5 if args.quick else 1.0  # a run shorter than this is repeated (median reported)
    gemm = [dict(what="square 2048", gflops=matmul_gflops(device, 2048, 2048, 2048, reps))]
    for shape in shapes:
        d = SHAPES[shape]["d_model"]
        rows = max(batches) * max(beam_list)
        gemm.append(dict(what=f"{shape} FFN ({rows}x{d} @ {d}x{2 * SHAPES[shape]['d_ff']})",
                         gflops=matmul_gflops(device, rows, d, 2 * SHAPES[shape]["d_ff"], reps)))
    print_table("matmul GFLOP/s (measured)", gemm, ["what", "gflops"])

    qps_rows, trie_rows, constraint_rows, flop_rows = [], [], [], []
    for shape in shapes:
        s = SHAPES[shape]
        _, vocab = code_vocab(s["codes"])
        model = build_model(shape, vocab, device)
        T = len(s["codes"]) + 1
        hf_cap = args.hf_queries or cfg["hf_queries"].get(shape, 16)
        zgen = torch.Generator().manual_seed(args.seed)
        cart = s.get("model") == "cart"
        if cart:  # queries are word ids
            zall = torch.randint(2, s["src_vocab"], (max(max(batches), hf_cap), s["src_len"]), generator=zgen)
            zall = zall.to(device)
        else:
            zall = torch.randn(max(max(batches), hf_cap), s["input_dim"], generator=zgen).to(device)
        warm = zall[:2]
        # warm-up every method once (allocators, MKL, HF generate setup)
        wseqs = random_ids(200, s["codes"], args.seed)
        wcsr, wdict = CSRTrie.from_sequences(wseqs, vocab), dict_trie(wseqs)
        beam_search(model, warm, wcsr, 2)
        beam_search(model, warm, None, 2, max_len=T)
        if "hf" not in skip and "qps" not in skip and not cart:
            hf_generate(model, warm, 2, T, wdict, mode="python")
            hf_generate(model, warm, 2, T, wcsr, mode="processor")
        unconstrained_done = set()
        for n in sizes:
            seqs = random_ids(n, s["codes"], args.seed + n)
            t_csr, csr = timed(lambda: CSRTrie.from_sequences(seqs, vocab), "cpu")
            r0 = rss_mb()
            t_dict, dtrie = timed(lambda: dict_trie(seqs), "cpu")
            dict_mb = rss_mb() - r0
            trie_rows.append(dict(shape=shape, corpus=n, sequences=csr.num_sequences, nodes=csr.num_nodes,
                                  csr_build_s=t_csr, csr_mb=csr.memory_bytes() / 2**20,
                                  csr_bytes_per_id=csr.memory_bytes() / n, dict_build_s=t_dict,
                                  dict_rss_growth_mb=dict_mb))
            print(f"[{time.perf_counter() - t_start:6.0f}s] {shape} {n} ids: CSR {t_csr:.2f}s "
                  f"{csr.memory_bytes() / 2**20:.1f} MiB, dict trie {t_dict:.2f}s (+{dict_mb:.0f} MB RSS)", flush=True)
            if "constraint" not in skip and n == constraint_n and not cart:
                constraint_rows += constraint_cost(shape, seqs, csr, dtrie, vocab, args.constraint_queries,
                                                   args.constraint_beams, device, args.seed)
            depth_nodes = np.diff(csr.depth_ptr).tolist()  # nodes per depth (0: root)
            for batch in batches:
                for beams in beam_list:
                    if batch == batches[0] and not cart:  # rows per step: engine 1, then min(beams, prefixes); HF `beams`
                        slots = [1] + [min(beams, k) for k in depth_nodes[1:T]]
                        flop_rows.append(dict(shape=shape, corpus=n, beams=beams,
                                              engine_gflop_per_query=query_flops(s, vocab, T, slots, 1) / 1e9,
                                              hf_gflop_per_query=query_flops(s, vocab, T, [beams] * T, beams) / 1e9))
                    setting = dict(shape=shape, batch=batch, beams=beams, corpus=n)
                    if "qps" in skip:
                        continue
                    z = zall[:batch]
                    dt, runs = measure(lambda: beam_search(model, z, csr, beams, batch_size=batch), device, min_s)
                    qps_rows.append(dict(**setting, method="engine", queries=len(z), batch_effective=batch,
                                         runs=runs, seconds=dt, q_per_s=len(z) / dt))
                    if (batch, beams) not in unconstrained_done:
                        unconstrained_done.add((batch, beams))
                        dt, runs = measure(lambda: beam_search(model, z, None, beams, max_len=T, batch_size=batch),
                                           device, min_s)
                        qps_rows.append(dict(**{**setting, "corpus": "-"}, method="unconstrained", queries=len(z),
                                             batch_effective=batch, runs=runs, seconds=dt, q_per_s=len(z) / dt))
                    if "hf" not in skip and not cart:
                        zh = zall[:min(batch, hf_cap)]
                        for method, trie, mode in (("hf_python", dtrie, "python"), ("hf_processor", csr, "processor")):
                            dt, runs = measure(lambda: hf_generate(model, zh, beams, T, trie, mode=mode), device, min_s)
                            qps_rows.append(dict(**setting, method=method, queries=len(zh), batch_effective=len(zh),
                                                 runs=runs, seconds=dt, q_per_s=len(zh) / dt))
                    line = ", ".join(f"{r['method']} {r['q_per_s']:.1f}" for r in qps_rows
                                     if {k: r[k] for k in ("shape", "batch", "beams")} ==
                                     {k: setting[k] for k in ("shape", "batch", "beams")}
                                     and r["corpus"] in (n, "-"))
                    print(f"[{time.perf_counter() - t_start:6.0f}s] {shape} n={n} batch={batch} beams={beams}: "
                          f"q/s {line}", flush=True)
            del dtrie, csr, seqs
        del model

    # speedups vs the peers' method at the same setting
    ref = {(r["shape"], r["batch"], r["beams"], r["corpus"]): r["q_per_s"] for r in qps_rows
           if r["method"] == "hf_python"}
    for r in qps_rows:
        base = ref.get((r["shape"], r["batch"], r["beams"], r["corpus"]))
        r["x_vs_hf_python"] = r["q_per_s"] / base if base else float("nan")

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
    gf = gemm[0]["gflops"]
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
                 "x_vs_hf_python"])
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
    (out / "decoding_summary.json").write_text(json.dumps(
        {"device": str(device), "threads": torch.get_num_threads(), "quick": bool(args.quick), "targets": summary,
         "seconds": time.perf_counter() - t_start}, indent=2, default=str))
    plot(out / "decoding.png", qps_rows, faiss_rows, constraint_rows, batches, beam_list)
    print(f"\nwrote {out}/decoding_*.csv, decoding.png in {time.perf_counter() - t_start:.0f}s")
    return 0


def targets(qps_rows, constraint_rows, trie_rows, sizes) -> list[dict]:
    out = []
    for shape, goal in (("cart", 10.0), ("genius", 2.0)):
        xs = [r["x_vs_hf_python"] for r in qps_rows if r["shape"] == shape and r["method"] == "engine"
              and r["beams"] == 30 and not math.isnan(r["x_vs_hf_python"])]
        if xs:
            out.append(dict(target=f"engine >= {goal:g}x HF+Python trie, {shape}, beam 30",
                            measured=f"{min(xs):.2f}x..{max(xs):.2f}x", met=min(xs) >= goal))
    for shape in sorted({r["shape"] for r in constraint_rows}):
        rs = [r for r in constraint_rows if r["shape"] == shape]
        py = statistics.mean(r["python_trie_ms"] for r in rs)
        en = statistics.mean(r["engine_constraint_ms"] for r in rs)
        out.append(dict(target=f"constraint per step >= 100x below the Python trie ({shape}, {rs[0]['rows']} rows)",
                        measured=f"{py:.1f} ms vs {en:.2f} ms = {py / en:.0f}x", met=py / en >= 100))
    lo, hi = min(sizes), max(sizes)
    for shape in sorted({r["shape"] for r in qps_rows}):
        for batch in sorted({r["batch"] for r in qps_rows}):
            for beams in sorted({r["beams"] for r in qps_rows}):
                q = {r["corpus"]: r["q_per_s"] for r in qps_rows if r["method"] == "engine" and r["shape"] == shape
                     and r["batch"] == batch and r["beams"] == beams}
                if lo in q and hi in q and lo != hi:
                    out.append(dict(target=f"engine q/s at {hi} within 10% of {lo} ({shape}, b{batch}, k{beams})",
                                    measured=f"{q[hi] / q[lo]:.2f}", met=q[hi] >= 0.9 * q[lo]))
    for r in trie_rows:
        if r["corpus"] == 1_000_000:
            out.append(dict(target=f"1M-ID trie build <= 10 s and <= 300 MB ({r['shape']})",
                            measured=f"{r['csr_build_s']:.2f} s, {r['csr_mb']:.0f} MiB",
                            met=r["csr_build_s"] <= 10 and r["csr_mb"] <= 300))
    return out


def plot(path: Path, qps_rows, faiss_rows, constraint_rows, batches, beam_list):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in qps_rows))
    panels = len(shapes) + (1 if constraint_rows else 0)
    if panels == 0:
        return
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    batch = max(batches)
    beams = 30 if 30 in beam_list else max(beam_list)
    for ax, shape in zip(axes[0], shapes):
        for method, style in zip(METHODS, ("o-", "s-", "^-", "--")):
            rs = [r for r in qps_rows if r["shape"] == shape and r["method"] == method and r["batch"] == batch
                  and r["beams"] == beams]
            if not rs:
                continue
            if method == "unconstrained":
                ax.axhline(rs[0]["q_per_s"], ls="--", color="gray", label="engine, unconstrained")
                continue
            ax.plot([r["corpus"] for r in rs], [r["q_per_s"] for r in rs], style,
                    label=method + (" (HF timed on %d q)" % rs[0]["queries"] if method.startswith("hf") else ""))
        fr = [r for r in faiss_rows if r["batch"] == batch]
        if fr:
            ax.plot([r["corpus"] for r in fr], [r["q_per_s"] for r in fr], "k:", label="faiss IndexFlatIP 512-d")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("corpus size (identifiers)")
        ax.set_ylabel("queries / s")
        ax.set_title(f"{shape}-like, batch {batch}, beams {beams}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    if constraint_rows:
        ax = axes[0][-1]
        for shape in dict.fromkeys(r["shape"] for r in constraint_rows):
            rs = [r for r in constraint_rows if r["shape"] == shape]
            ax.plot([r["depth"] for r in rs], [r["python_trie_ms"] for r in rs], "o-", label=f"{shape}: Python trie")
            ax.plot([r["depth"] for r in rs], [r["engine_constraint_ms"] for r in rs], "^-",
                    label=f"{shape}: engine")
            ax.plot([r["depth"] for r in rs], [r["trie_logits_processor_ms"] for r in rs], "s:",
                    label=f"{shape}: TrieLogitsProcessor")
        ax.set_yscale("log")
        ax.set_xlabel("decoding step (prefix length)")
        ax.set_ylabel("ms per step")
        ax.set_title(f"constraint cost, {constraint_rows[0]['rows']} rows")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":  # pragma: no cover
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))
