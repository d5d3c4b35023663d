"""`python -m genretr.bench stability` end to end on debug=tiny: one row per (threads, seed), from results.json."""
from __future__ import annotations

import csv
import json
import subprocess
import sys


def test_stability_bench_tiny(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "genretr.bench", "stability", "--seeds", "0,1", "--threads", "1",
                           "--methods", "embedding", "--out", str(out), "debug=tiny"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "stability.csv")))
    assert [(r["threads"], r["seed"]) for r in rows] == [("1", "0"), ("1", "1")]
    for r in rows:
        res = json.loads((out / "t1" / f"seed{r['seed']}" / "embedding" / "results.json").read_text())
        assert float(r["embedding R@1"]) == 100 * res["metrics"]["t2i"]["R@1"]
        assert res["provenance"]["torch_threads"] == 1 and res["provenance"]["seed"] == int(r["seed"])
    assert "budget embedding R@1 min ≥ 60" in proc.stdout and "embedding R@1 | 2 |" in proc.stdout
