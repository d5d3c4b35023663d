"""Measurement helpers and sections of the decoding benchmark (`genretr.bench.decoding`): model and identifier
construction, timing, measured matmul GFLOP/s, FLOP counts per query, the constraint's per-step cost, faiss
flat search and its crossover with the engine, bytes per item per identifier scheme."""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from genretr.hardware import status_mb

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
    mb = status_mb("VmRSS")
    return float("nan") if mb is None else mb


def dict_trie(seqs: np.ndarray):
    """The Python dict trie (genretr.decoding.trie.Trie) over `seqs`: the peers' data structure."""
    from genretr.decoding.trie import Trie

    return Trie(SimpleNamespace(sequences=seqs))


def matmul_gflops(device, rows: int, d: int, out: int, reps: int = 10, dtype=torch.float32) -> float:
    """Measured GFLOP/s of a (rows, d) x (d, out) product in `dtype` (the peak the budgets compare to)."""
    x, w = torch.randn(rows, d, device=device, dtype=dtype), torch.randn(out, d, device=device, dtype=dtype)
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

    from genretr.decoding.engine import constrained_scores
    from genretr.decoding.hf import TrieLogitsProcessor, prefix_allowed_fn

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
