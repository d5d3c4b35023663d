"""`python -m genretr.bench decoding --quick` on a tiny setting: the CLI runs and writes its outputs."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_decoding_quick_tiny(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "genretr.bench", "decoding", "--quick", "--shapes", "tiny", "--corpus", "300,1500",
           "--batches", "8", "--beams", "3,5", "--threads", "1", "--constraint-queries", "16",
           "--constraint-beams", "5", "--dtypes", "fp32,bf16", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("qps", "constraint", "trie", "faiss", "crossover", "flops", "bytes", "gemm"):
        assert (out / f"decoding_{name}.csv").is_file(), name
    assert (out / "decoding.png").stat().st_size > 0
    rows = list(csv.DictReader(open(out / "decoding_qps.csv")))
    methods = {r["method"] for r in rows}
    assert methods == {"engine", "engine_bf16", "unconstrained", "hf_python", "hf_python_bf16", "hf_processor"}
    assert all(float(r["q_per_s"]) > 0 for r in rows)
    assert {r["corpus"] for r in rows if r["method"] in ("engine", "engine_bf16")} == {"300", "1500"}
    assert all(r["x_vs_hf_python_bf16"] not in ("", "nan") for r in rows if r["method"] == "engine_bf16")
    summary = json.loads((out / "decoding_summary.json").read_text())
    assert summary["quick"] is True and summary["targets"]
    assert "q/s (decoding only" in proc.stdout and "== targets" in proc.stdout
    # issue #18's budgets: printed with PASS/MISS; the tiny shape is neither CART- nor GENIUS-like
    assert "== budgets (issue #18)" in proc.stdout
    assert len(summary["budgets"]) == 6 and {b["status"] for b in summary["budgets"]} <= {"PASS", "MISS"}
    assert all(b["measured"] == "not measured" for b in summary["budgets"])
    gemm = list(csv.DictReader(open(out / "decoding_gemm.csv")))
    assert {g["dtype"] for g in gemm} == {"float32", "bfloat16"} and all(float(g["gflops"]) > 0 for g in gemm)


def test_bench_cli_lists_subcommands():
    proc = subprocess.run([sys.executable, "-m", "genretr.bench", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "decoding" in proc.stdout


def test_bench_runs_the_cart_fusion_decoder_in_fp32_only(tmp_path):
    """CART's own seq2seq (word-id queries) is measured through the engine; it has no HF generate path.  With
    `--dtypes fp32` (the default on a CPU without bf16 hardware) nothing is timed in bf16 and the bf16 budgets
    say n/a."""
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "genretr.bench", "decoding", "--quick", "--shapes", "tiny_cart", "--corpus", "300",
           "--batches", "8", "--beams", "3", "--threads", "1", "--skip", "hf,constraint,faiss,bytes",
           "--dtypes", "fp32", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "dtypes fp32 (--dtypes)" in proc.stdout
    rows = list(csv.DictReader(open(out / "decoding_qps.csv")))
    assert {r["method"] for r in rows} == {"engine", "unconstrained"}
    assert all(float(r["q_per_s"]) > 0 for r in rows)
    assert {g["dtype"] for g in csv.DictReader(open(out / "decoding_gemm.csv"))} == {"float32"}
    summary = json.loads((out / "decoding_summary.json").read_text())
    assert summary["dtypes"] == ["fp32"]
    assert [b["status"] for b in summary["budgets"] if "bf16 step" in b["budget"]] == ["n/a"] * 4


@pytest.mark.slow  # 35 s; the compiled step itself is one graph and exact in tests/decoding/test_engine_bf16.py
def test_bench_compile_path_traces_the_whole_step(tmp_path):
    """`--compile` (here with the eager backend: the tracing, without inductor's minutes of C++ on a CPU) runs the
    engine rows through torch.compile with fullgraph=True, for the T5 and the CART step decoders."""
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "genretr.bench", "decoding", "--quick", "--shapes", "tiny,tiny_cart", "--corpus", "300",
           "--batches", "4", "--beams", "3", "--threads", "1", "--compile", "--compile-backend", "eager",
           "--skip", "hf,constraint,faiss,bytes", "--dtypes", "fp32,bf16", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "compile={'backend': 'eager', 'fullgraph': True}" in proc.stdout
    assert json.loads((out / "decoding_summary.json").read_text())["compile"] is True
    rows = list(csv.DictReader(open(out / "decoding_qps.csv")))
    assert {(r["shape"], r["method"]) for r in rows} >= {(s, m) for s in ("tiny", "tiny_cart")
                                                         for m in ("engine", "engine_bf16")}
