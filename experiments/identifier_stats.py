"""The identify stage's statistics of every run of a multirun, per row (the run's overrides without the seed):
mean ± std over seeds of each number in the identify artifact's `*_stats.json` (CART: K-Means usage, the RQ-VAE's
relative reconstruction error, collisions; GENIUS: modality agreement, ...).

    .venv/bin/python experiments/identifier_stats.py multirun/cart_table4 [KEY ...]

KEYs keep only those statistics (default: every number).  The artifacts are read where the runs' artifacts.json
says they are, so run it on the machine and cache that made the table.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def row_stats(sweep: Path) -> dict[str, dict[str, list[float]]]:
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for results in sorted(sweep.glob("*/results.json")):
        run = results.parent
        row = " ".join(o for o in json.loads(results.read_text())["overrides"]
                       if not o.startswith(("seed=", "experiment=")))
        identify = Path(json.loads((run / "artifacts.json").read_text())["identify"])
        for stats in sorted(identify.glob("*_stats.json")):
            for key, value in json.loads(stats.read_text()).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    rows[row or "(default)"][key].append(float(value))
    return rows


def main(args: list[str]) -> None:
    if not args:
        raise SystemExit(__doc__)
    sweep, keys = Path(args[0]), set(args[1:])
    rows = row_stats(sweep)
    if not rows:
        raise SystemExit(f"{sweep}: no runs with results.json")
    for row, stats in rows.items():
        shown = [f"{k} {np.mean(v):.3g} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.2g} (n {len(v)})"
                 for k, v in stats.items() if not keys or k in keys]
        print(f"{row}: " + "; ".join(shown))


if __name__ == "__main__":
    main(sys.argv[1:])
