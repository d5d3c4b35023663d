"""`python -m genretr.bench decoding --quick` on a tiny setting: the CLI runs and writes its outputs."""
import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_decoding_quick_tiny(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "genretr.bench", "decoding", "--quick", "--shapes", "tiny", "--corpus", "300,1500",
           "--batches", "8", "--beams", "3,5", "--threads", "1", "--constraint-queries", "16",
           "--constraint-beams", "5", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("qps", "constraint", "trie", "faiss", "crossover", "flops", "bytes", "gemm"):
        assert (out / f"decoding_{name}.csv").is_file(), name
    assert (out / "decoding.png").stat().st_size > 0
    rows = list(csv.DictReader(open(out / "decoding_qps.csv")))
    methods = {r["method"] for r in rows}
    assert methods == {"engine", "unconstrained", "hf_python", "hf_processor"}
    assert all(float(r["q_per_s"]) > 0 for r in rows)
    assert {r["corpus"] for r in rows if r["method"] == "engine"} == {"300", "1500"}
    summary = json.loads((out / "decoding_summary.json").read_text())
    assert summary["quick"] is True and summary["targets"]
    assert "q/s (decoding only" in proc.stdout and "== targets" in proc.stdout


def test_bench_cli_lists_subcommands():
    proc = subprocess.run([sys.executable, "-m", "genretr.bench", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "decoding" in proc.stdout


def test_bench_runs_the_cart_fusion_decoder(tmp_path):
    """CART's own seq2seq (word-id queries) is measured through the engine; it has no HF generate path."""
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "genretr.bench", "decoding", "--quick", "--shapes", "tiny_cart", "--corpus", "300",
           "--batches", "8", "--beams", "3", "--threads", "1", "--skip", "hf,constraint,faiss,bytes", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "decoding_qps.csv")))
    assert {r["method"] for r in rows} == {"engine", "unconstrained"} and all(float(r["q_per_s"]) > 0 for r in rows)
