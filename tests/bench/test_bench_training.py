"""`python -m genretr.bench training`: the CLI on a tiny setting, its FLOP counter and its budget line."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genretr.bench.training import COLUMNS, budget, code_labels, flops_per_sample

ROOT = Path(__file__).resolve().parents[2]


def test_bench_training_quick_tiny(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "genretr.bench", "training", "--quick", "--models", "t5_string", "--threads", "1",
           "--batch", "8", "--gemm", "64,128", "--dtypes", "fp32,bf16", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "training.csv") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    assert [(r["model"], r["threads"], r["dtype"]) for r in rows] == [("t5_string", "1", "fp32"),
                                                                         ("t5_string", "1", "bf16")]
    for r in rows:
        assert float(r["samples_per_s"]) > 0 and float(r["gflops"]) > 0 and float(r["matmul_peak_gflops"]) > 0
        assert r["batch"] == "8" and r["steps"] == "2"
    assert float(rows[1]["bf16_over_fp32"]) > 0 and rows[0]["bf16_over_fp32"] == ""
    summary = json.loads((out / "training.json").read_text())
    assert summary["quick"] is True and summary["budget"]["status"] == "n/a"  # the other decoders not measured
    assert "vocab 1002" in summary["models"]["t5_string"]["notes"]  # the default string IDs on shapes
    assert {(p["dtype"], p["threads"]) for p in summary["matmul_peak"]} == {("fp32", 1), ("bf16", 1)}
    assert all(p["sizes"] == [64, 128] and p["runs"][0]["n"] in (64, 128) for p in summary["matmul_peak"])
    assert "bf16 hardware:" in proc.stdout and "| t5_string | 1 | 8 |" in proc.stdout and "-> n/a" in proc.stdout


class _Linear(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def training_step(self, batch, batch_idx):
        return self.lin(batch["x"]).sum()


def test_flops_of_a_linear_training_step():
    """Forward 2·B·in·out; backward 2·B·in·out for the weight and, when the input needs it, as much again."""
    B, d_in, d_out = 16, 24, 40
    x = torch.randn(B, d_in)
    assert flops_per_sample(_Linear(d_in, d_out), {"x": x}) * B == 4 * B * d_in * d_out
    assert flops_per_sample(_Linear(d_in, d_out), {"x": x.requires_grad_()}) * B == 6 * B * d_in * d_out


class _Attention(nn.Module):
    def training_step(self, batch, batch_idx):
        return F.scaled_dot_product_attention(*batch).sum()


def test_flops_count_cpu_attention():
    """torch's counter knows only the GPU attention kernels; on a CPU the helper counts the flash kernel as
    torch's formulas do: 2 batched matmuls forward, 5 backward (QKᵀ recomputed), 2·B·H·S²·D each."""
    B, H, S, D = 2, 3, 5, 4
    qkv = tuple(torch.randn(B, H, S, D, requires_grad=True) for _ in range(3))
    assert flops_per_sample(_Attention(), qkv) * B == 14 * B * H * S * S * D


def test_code_labels():
    g = torch.Generator().manual_seed(0)
    labels, vocab = code_labels([3, 64, 64], True, 50, g)
    assert vocab == 2 + 3 + 128 + 1 and labels.shape == (50, 5)
    assert (labels[:, 0] >= 2).all() and (labels[:, 0] < 5).all() and (labels[:, 1] >= 5).all()
    assert (labels[:, 3] == vocab - 1).all() and (labels[:, 4] == 1).all()  # counter u0, then EOS


def test_budget_line():
    status, line = budget({"t5_string": 2.1, "t5_genius": 1.8, "cart": 3.0})
    assert status == "PASS" and line.endswith("-> PASS") and "t5_genius 1.80x" in line
    status, line = budget({"t5_string": 2.1, "t5_genius": 1.79, "cart": 3.0, "encoder": 0.5})
    assert status == "MISS" and "encoder" not in line  # the budget is about the decoders
    status, line = budget({"t5_string": 2.5, "encoder": 3.0})
    assert status == "n/a" and "not measured: t5_genius, cart" in line
    assert budget({"t5_string": 1.0, "cart": None, "t5_genius": 2.0})[0] == "n/a"
    status, line = budget({"t5_string": 1.0}, bf16=False)
    assert status == "n/a" and line.endswith("bf16 not timed (--dtypes fp32,bf16) -> n/a")


def test_bench_times_bf16_only_where_the_hardware_has_it(monkeypatch):
    import genretr.hardware
    from genretr.bench import timed_dtypes

    monkeypatch.setattr(genretr.hardware, "bf16_kind", lambda accelerator="cpu": "cuda" if accelerator == "cuda" else None)
    dtypes, why = timed_dtypes(None)
    assert dtypes == ["fp32"] and "no bf16 hardware" in why
    assert timed_dtypes(None, "cuda") == (["fp32", "bf16"], "dtypes fp32,bf16 (bf16 hardware: cuda)")
    assert timed_dtypes("bf16,fp32")[0] == ["fp32", "bf16"]  # asked for: timed, emulated or not
    assert timed_dtypes("fp32")[0] == ["fp32"]
    for wrong in ("fp16", "bf16"):  # fp32 is the baseline of every ratio
        with pytest.raises(SystemExit, match=f"--dtypes {wrong}: fp32 \\(the baseline\\), then optionally bf16"):
            timed_dtypes(wrong)


def test_bench_training_in_fp32_alone(tmp_path, capsys):
    """`--dtypes fp32` (the default without bf16 hardware): fp32 rows only, no ratio column, the budget n/a."""
    import argparse

    from genretr.bench import training

    parser = argparse.ArgumentParser()
    training.add_arguments(parser)
    args = parser.parse_args(["--quick", "--models", "t5_string", "--threads", "1", "--batch", "8", "--gemm", "64",
                              "--dtypes", "fp32", "--out", str(tmp_path)])
    threads = torch.get_num_threads()
    try:
        assert training.run(args) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "| model | threads | batch | fp32 samples/s | fp32 GFLOP/s (peak, %) |" in out and "bf16/fp32" not in out
    summary = json.loads((tmp_path / "training.json").read_text())
    assert summary["dtypes"] == ["fp32"] and [r["dtype"] for r in summary["rows"]] == ["fp32"]
    assert summary["budget"]["status"] == "n/a" and "bf16 not timed" in summary["budget"]["line"]
