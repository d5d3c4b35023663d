"""Markdown tables of results: `python -m genretr.report DIR [DIR ...] [options]`.

Collects every `results.json` under the given dirs (a run dir, a multirun dir, or any parent;
searched recursively) and prints one row per configuration.  The row label is made of the overrides
that differ across the collected runs, `seed` left out: runs that differ only in their seed (override
`seed=N`, results.json's `provenance.seed`, or .hydra/config.yaml) are replicates of one row, whose `n`
column counts them.  A cell is `mean ± std` over them (sample std, ddof=1; the mean alone when n = 1),
percent with one decimal for @-metrics; `[k]` follows it when only k of the row's n runs have the value;
`–` = missing.

Paired test over queries (genretr.report_stats, genretr.stats): two rows' per-query outcomes (each run
dir's per_query.json: the first relevant item's rank) are paired by (seed, task, query id) over the seeds
both rows ran and pooled; the per-query metric (R@K: hit within K; MRR@10: 1/rank within 10) differences
go into a two-sided paired sign-flip permutation test (exact over all sign patterns for <= 16 non-zero
differences, else 10,000 random ones from a fixed seed).  A permutation test rather than a paired
bootstrap: its p-value is exact under H0 (the two rows' outcomes of a query exchangeable) at any number
of pairs, where the bootstrap's is asymptotic and too small with few discordant queries.  Each
(seed, query) pair is one unit: the test covers the sampling of queries, and of training noise only
what the pooled seeds show -- read it beside the std column.
`--compare A B` (row labels or unique substrings) prints it for every task and metric shown.

Reference file (`--reference`), values in percent exactly as the paper prints them::

    paper: GRACE            # optional, shown in the caption
    table: 1                # optional
    dataset: Flickr30K      # optional
    rows:                   # required: row key -> task -> metric -> value
      "identifier=string": {t2i: {R@1: 30.5, R@5: 39.0, R@10: 40.4}}
      "method=embedding, backbone=t5": {t2i: {R@1: 58.4}}

A row key is comma-separated `k=v` pairs; it matches a run when every pair is among the run's
overrides or its config choices (as `group=option`).  When several rows match, the one with
the most pairs matched by explicit overrides wins, then the one with most pairs, then file
order.  Matched cells print `ours (paper)`; rows matching no run are appended (in file order)
at the bottom as `KEY (paper only)`.  Under the table, "Orderings" checks every pair of rows with runs
whose paper values of the first metric differ: `→ holds` when the paired test separates them (p < 0.05)
in the paper's direction, `→ reversed` when in the other, else `→ not separated`.

Runs from several git commits, without a recorded commit, or from a dirty tree (results.json's
`provenance.git`) get a `warning:` line on stderr and a note under the table.  Errors print one line
naming the file on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import yaml

from genretr.report_stats import ReportError, Row, compare, fmt_paper, orderings, provenance_warnings
from genretr.stats import summary

DEFAULT_METRICS = ("R@1", "R@5", "R@10")
MISSING = "–"


def _natural(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _load_run(path: Path) -> dict:
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(path, f"unreadable results JSON ({e})") from None
    if not isinstance(run, dict) or not isinstance(run.get("metrics", {}), dict) or not all(
            isinstance(m, dict) for m in run.get("metrics", {}).values()):
        raise ReportError(path, "not a results object with a task -> metric -> value 'metrics' mapping")
    hydra_ov = path.parent / ".hydra" / "overrides.yaml"
    if "overrides" not in run and hydra_ov.is_file():  # fall back to Hydra's record of them
        try:
            run["overrides"] = yaml.safe_load(hydra_ov.read_text(encoding="utf-8")) or []
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ReportError(hydra_ov, f"unreadable overrides ({e})") from None
    run.setdefault("overrides", [])
    if not isinstance(run["overrides"], list):
        raise ReportError(path, "'overrides' is not a list")
    run["overrides"] = [str(o) for o in run["overrides"]]
    run.setdefault("choices", {})
    run.setdefault("metrics", {})
    if not isinstance(run.setdefault("provenance", {}), dict) or not isinstance(
            run["provenance"].get("git") or {}, dict):
        raise ReportError(path, "'provenance' is not a mapping with a 'git' mapping")
    run["path"] = str(path)
    run["seed"] = _seed(run, path)
    return run


def _seed(run: dict, path: Path):
    """The run's seed: provenance.seed, else a `seed=` override, else the seed in .hydra/config.yaml."""
    if run["provenance"].get("seed") is not None:
        return run["provenance"]["seed"]
    for o in run["overrides"]:
        if _key(o) == "seed":
            v = o.split("=", 1)[1]
            return int(v) if v.lstrip("-").isdigit() else v
    cfg = path.parent / ".hydra" / "config.yaml"
    if cfg.is_file():
        try:
            return (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("seed")
        except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError) as e:
            raise ReportError(cfg, f"unreadable config ({e})") from None
    return None


def collect(dirs) -> list[dict]:
    """Load every results.json under `dirs` (recursively), each with its `path` added."""
    runs, seen = [], set()
    for d in dirs:
        d = Path(d)
        files = [d] if d.is_file() else sorted(d.rglob("results.json"), key=_natural)
        if not files:
            raise ReportError(d, "no results.json found" if d.exists() else "no such file or directory")
        for f in files:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                runs.append(_load_run(f))
    return runs


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _norm(pair: str) -> str:
    """`k=v` as matched: leading `+` dropped, YAML booleans spelled one way (Hydra records `False`)."""
    k, sep, v = pair.strip().lstrip("+").partition("=")
    return f"{k}{sep}{v.lower() if v.lower() in ('true', 'false') else v}"


def labels(runs: list[dict]) -> list[str]:
    """Row labels: each run's overrides, but `seed`, whose key has a value that differs across runs."""
    overrides = [[o for o in r["overrides"] if _key(o) != "seed"] for r in runs]
    maps = [{_key(o): o for o in ov} for ov in overrides]
    keys = set().union(*maps) if maps else set()
    differing = {k for k in keys if len({m.get(k) for m in maps}) > 1}
    out = []
    for ov in overrides:
        shown = [o for o in ov if _key(o) in differing] if differing else ov
        out.append(", ".join(shown) or "(default)")
    return out


def group_rows(runs: list[dict], reference_rows: dict | None = None) -> list[Row]:
    """Runs grouped by label (seed replicates), sorted by label, each with its reference row key."""
    rows: dict[str, Row] = {}
    for label, run in zip(labels(runs), runs):
        rows.setdefault(label, Row(label)).runs.append(run)
    out = sorted(rows.values(), key=lambda r: _natural(r.label))
    for row in out:
        row.ref_key = _match(row.runs[0], reference_rows) if reference_rows else None
    return out


def _pairs(key: str) -> list[str]:
    return [_norm(p) for p in re.split(r",(?![^\[\]{}]*[\]}])", key) if p.strip()]


def load_reference(path) -> dict:
    """Read and validate a reference YAML (format in the module docstring)."""
    try:
        ref = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ReportError(path, f"unreadable reference YAML ({e})") from None
    if not isinstance(ref, dict) or not isinstance(ref.get("rows"), dict) or not ref["rows"]:
        raise ReportError(path, "reference must be a mapping with a non-empty 'rows' mapping")
    for key, tasks in ref["rows"].items():
        if not isinstance(key, str) or not _pairs(key) or not all("=" in p for p in _pairs(key)):
            raise ReportError(path, f"row key {key!r} is not comma-separated k=v pairs")
        if not isinstance(tasks, dict) or not all(
                isinstance(m, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                            for v in m.values()) for m in tasks.values()):
            raise ReportError(path, f"row {key!r} must map task -> metric -> number")
    return ref


def _match(run: dict, rows: dict) -> str | None:
    """The reference row key that best matches `run`, or None."""
    overrides = {_norm(o) for o in run["overrides"]}
    choices = {f"{g}={o}" for g, o in (run.get("choices") or {}).items() if o is not None}
    best, best_score = None, None
    for key in rows:
        pairs = _pairs(key)
        if all(p in overrides or p in choices for p in pairs):
            score = (sum(p in overrides for p in pairs), len(pairs))
            if best_score is None or score > best_score:
                best, best_score = key, score
    return best


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _cell(metric: str, values: list, n_runs: int) -> str:
    """`mean ± std` of the runs' values (percent for @-metrics), `[k]` when only k of n runs have one."""
    values = [v for v in values if _number(v)]
    if not values:
        return MISSING
    if "@" not in metric and metric != "q/s" and all(isinstance(v, int) for v in values) and len(set(values)) == 1:
        text = str(values[0])  # a count such as `queries`
    else:
        s, scale = summary(values), (100 if "@" in metric else 1)  # fractions in [0, 1] -> percent
        text = f"{scale * s.mean:.1f}" + (f" ± {scale * s.std:.1f}" if s.n > 1 else "")
    return text + (f" [{len(values)}]" if len(values) < n_runs else "")


def _esc(s: str) -> str:
    return s.replace("|", r"\|")


def markdown_table(runs, reference=None, tasks=None, metrics=None, compare_rows=None) -> str:
    """The markdown table of `runs` (from `collect`), optionally beside a loaded reference (then with its
    orderings checked), with provenance warnings and, for `compare_rows` (A, B), their paired tests."""
    metrics = list(metrics or DEFAULT_METRICS)
    rows_ref = (reference or {}).get("rows") or {}
    if not tasks:
        tasks = []
        for t in [t for r in runs for t in r["metrics"]] + [t for v in rows_ref.values() for t in v]:
            if t not in tasks:
                tasks.append(t)
    header = ["n"] + [f"{t} {m}" for t in tasks for m in metrics]
    header += ["q/s"] if len(tasks) == 1 else [f"{t} q/s" for t in tasks]
    rows = group_rows(runs, rows_ref)
    body = []
    for row in rows:
        n = len(row.runs)
        ours = lambda t, m: [(r["metrics"].get(t) or {}).get(m) for r in row.runs]  # noqa: E731
        cells = []
        for t in tasks:
            paper = (rows_ref[row.ref_key].get(t) or {}) if row.ref_key is not None else {}
            for m in metrics:
                cell = _cell(m, ours(t, m), n)
                cells.append(f"{cell} ({fmt_paper(paper[m])})" if m in paper else cell)
        cells += [_cell("q/s", ours(t, "q_per_s"), n) for t in tasks]
        body.append([row.label, str(n)] + cells)
    matched = {row.ref_key for row in rows}
    for key, by_task in rows_ref.items():
        if key not in matched:
            cells = [f"{MISSING} ({fmt_paper(by_task[t][m])})" if m in (by_task.get(t) or {}) else MISSING
                     for t in tasks for m in metrics]
            body.append([f"{key} (paper only)", "0"] + cells + [MISSING] * len(tasks))
    lines = ["| run | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    lines += ["| " + " | ".join(_esc(c) for c in row) + " |" for row in body]
    if reference:
        table = reference.get("table")
        name = " ".join(str(x) for x in (reference.get("paper"), table and f"Table {table}") if x)
        src = ", ".join(x for x in (name, str(reference.get("dataset") or "")) if x)
        lines += ["", f"Paper values in parentheses{': ' + src if src else ''}."]
    warnings = provenance_warnings(runs, rows)
    if warnings:
        lines += [""] + [f"Warning: {w}." for w in warnings]
    if reference:
        lines += orderings(rows, reference, tasks, metrics[0])
    if compare_rows:
        lines += compare(rows, list(compare_rows), tasks, metrics)
    return "\n".join(lines)


def plot_sweep(runs: list[dict], x: str, series: str | None, metrics: list[str], task: str | None, path) -> None:
    """A PNG of metric vs the override `x` (e.g. decoding.num_beams), one line per value of `series`;
    seed replicates at one x are plotted as their mean with a ±1 std bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def value(run, key):
        for o in run["overrides"]:
            if _key(o) == key:
                return o.split("=", 1)[1]
        return (run.get("choices") or {}).get(key)

    lines: dict[str, list] = {}
    for r in runs:
        xv = value(r, x)
        t = task or next(iter(r["metrics"]), None)
        if xv is None or t not in r["metrics"]:
            continue
        lines.setdefault(str(value(r, series)) if series else "", []).append((float(xv), r["metrics"][t]))
    if not lines:
        raise ReportError(path, f"no run has the override {x}= to plot")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.5), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for name, pts in sorted(lines.items()):
            at_x: dict[float, list] = {}
            for px, v in pts:
                if _number(v.get(m)):
                    at_x.setdefault(px, []).append(100 * v[m])
            xs = sorted(at_x)
            stats = [summary(at_x[px]) for px in xs]
            ax.errorbar(xs, [st.mean for st in stats], yerr=[0.0 if st.n < 2 else st.std for st in stats],
                        marker="o", capsize=3, label=name or None)
        ax.set_xlabel(x)
        ax.set_ylabel(f"{m} (%)")
        ax.grid(alpha=0.3)
    if series:
        axes[0][0].legend(title=series, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m genretr.report", description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run, multirun or parent dirs")
    p.add_argument("--reference", metavar="YAML", help="paper numbers to print beside ours")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated (R@1,R@5,R@10)")
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: all found)")
    p.add_argument("--out", metavar="FILE.md", help="also write the table to this file")
    p.add_argument("--plot", metavar="KEY", help="also plot metrics vs this override (e.g. decoding.num_beams)")
    p.add_argument("--series", metavar="KEY", help="one line per value of this override or group (--plot)")
    p.add_argument("--png", metavar="FILE.png", default="sweep.png", help="where --plot writes")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="paired test over queries of rows A and B (labels or unique substrings), every metric")
    a = p.parse_args(argv)
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    try:
        reference = load_reference(a.reference) if a.reference else None
        runs = collect(a.dirs)
        table = markdown_table(runs, reference, split(a.tasks), split(a.metrics), a.compare)
        if a.plot:
            plot_sweep(runs, a.plot, a.series, split(a.metrics), (split(a.tasks) or [None])[0], a.png)
        if a.out:
            try:
                Path(a.out).write_text(table + "\n", encoding="utf-8")
            except OSError as e:
                raise ReportError(a.out, f"cannot write ({e.strerror or e})") from None
    except ReportError as e:
        print(f"genretr.report: error: {e}", file=sys.stderr)
        return 2
    for w in provenance_warnings(runs, group_rows(runs)):
        print(f"warning: {w}", file=sys.stderr)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
