"""Outputs of the decoding benchmark (`genretr.bench.decoding`): tables, CSVs, the targets of issue #3, the
budgets of issue #18 (PASS/MISS) and the plot."""
from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

METHODS = ["hf_python", "hf_python_bf16", "hf_processor", "engine", "engine_bf16", "unconstrained"]


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


def budgets(qps_rows, gemm, flop_rows, device, bf16: bool = True) -> list[dict]:
    """Issue #18's decoding budgets (one run, ratios), beam 30, per shape (cart, genius): engine with a bf16 step
    >= 5x HF + Python trie in fp32 and >= 2x the same with the model in bf16 (n/a where bf16 was not timed,
    `bf16=False`); fp32 engine >= 70% of the fp32 matmul peak measured in the same run (achieved = q/s x the FLOP
    count per query of `query_flops`)."""
    out = []
    for shape in ("cart", "genius"):
        rows = [r for r in qps_rows if r["shape"] == shape and r["beams"] == 30]
        for base, goal in (("hf_python", 5.0), ("hf_python_bf16", 2.0)):
            ref = {(r["batch"], r["corpus"]): r["q_per_s"] for r in rows if r["method"] == base}
            xs = [r["q_per_s"] / ref[(r["batch"], r["corpus"])] for r in rows
                  if r["method"] == "engine_bf16" and (r["batch"], r["corpus"]) in ref]
            what = "HF + Python trie fp32" if base == "hf_python" else "HF + Python trie, model in bf16"
            if not bf16:
                measured, status = "bf16 not timed (--dtypes fp32,bf16)", "n/a"
            elif xs:
                measured, status = f"{min(xs):.2f}x..{max(xs):.2f}x", "PASS" if min(xs) >= goal else "MISS"
            else:
                measured, status = "not measured", "MISS"
            out.append(dict(budget=f"engine (bf16 step) >= {goal:g}x {what}, {shape}, beam 30", measured=measured,
                            status=status))
    peak = max((g["gflops"] for g in gemm if g.get("dtype", "float32") == "float32"), default=float("nan"))
    for shape in ("cart", "genius"):
        fr = [r for r in flop_rows if r["shape"] == shape and r["beams"] == 30
              and not math.isnan(r.get("engine_gflop_s_achieved", float("nan")))]
        if fr:
            frac = [r["engine_gflop_s_achieved"] / peak for r in fr]
            out.append(dict(budget=f"fp32 engine >= 70% of the fp32 matmul peak ({peak:.0f} GFLOP/s), {shape}, beam 30",
                            measured=f"{100 * min(frac):.0f}%..{100 * max(frac):.0f}%",
                            status="PASS" if min(frac) >= 0.7 else "MISS"))
        else:
            out.append(dict(budget=f"fp32 engine >= 70% of the fp32 matmul peak, {shape}, beam 30",
                            measured="not measured", status="MISS"))
    if str(device).startswith("cuda"):
        g = [r["q_per_s"] for r in qps_rows if r["shape"] == "genius" and r["beams"] == 30
             and r["method"] in ("engine", "engine_bf16")]
        out.append(dict(budget="GPU: engine, GENIUS-sized decoder, beam 30 (GENIUS reports 19.6 q/s on an RTX 3090)",
                        measured=f"{max(g):.1f} q/s" if g else "not measured", status="REPORTED"))
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
        for method, style in zip(METHODS, ("o-", "o:", "s-", "^-", "v-", "--")):
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
        _style(ax, "corpus size (identifiers)", "queries / s", f"{shape}-like, batch {batch}, beams {beams}")
    if constraint_rows:
        ax = axes[0][-1]
        for shape in dict.fromkeys(r["shape"] for r in constraint_rows):
            rs = [r for r in constraint_rows if r["shape"] == shape]
            ax.plot([r["depth"] for r in rs], [r["python_trie_ms"] for r in rs], "o-", label=f"{shape}: Python trie")
            ax.plot([r["depth"] for r in rs], [r["engine_constraint_ms"] for r in rs], "^-",
                    label=f"{shape}: engine")
            ax.plot([r["depth"] for r in rs], [r["trie_logits_processor_ms"] for r in rs], "s:",
                    label=f"{shape}: TrieLogitsProcessor")
        _style(ax, "decoding step (prefix length)", "ms per step", f"constraint cost, {constraint_rows[0]['rows']} rows")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _style(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Log y axis, labels, title, legend and grid of one panel."""
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
