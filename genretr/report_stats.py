"""genretr.report's statistics: rows of seed replicates, paired tests over queries, provenance warnings.

A row's runs are pooled per (seed, task, query id) with the other row's run of the same seed (from each
run dir's per_query.json, written by the evaluate stage); the per-query outcomes (R@K: hit within K,
MRR@K: 1/rank within K; genretr.evaluation.metrics.per_query_scores) go into genretr.stats'
sign-flip permutation test.  Orderings of a reference's rows are checked with it at p < ALPHA.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genretr.errors import GenretrError
from genretr.evaluation.metrics import per_query_scores
from genretr.stats import holm, PairedTest, paired_permutation_test

ALPHA = 0.05


class ReportError(GenretrError):
    """A results or reference file that cannot be used; the message names the file."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        super().__init__(f"{path}: {' '.join(str(problem).split())}")


@dataclass
class Row:
    """One table row: the runs (seed replicates) sharing a label, and the reference row they match."""
    label: str
    runs: list[dict] = field(default_factory=list)
    ref_key: str | None = None

    def by_seed(self) -> dict:
        """seed -> the first run with that seed (what the paired tests use)."""
        out: dict = {}
        for r in self.runs:
            out.setdefault(r.get("seed"), r)
        return out


def fmt_paper(v) -> str:
    return f"{v:.1f}" if round(v, 1) == v else f"{v:g}"


def load_per_query(run: dict) -> dict | None:
    """The run's per_query.json (task -> {"query_ids", "rank"}), or None if it has none; cached on the run."""
    if "_per_query" not in run:
        path = Path(run["path"]).parent / "per_query.json"
        data = None
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ReportError(path, f"unreadable per-query JSON ({e})") from None
            if not isinstance(data, dict) or not all(_per_query_task(v) for v in data.values()):
                raise ReportError(path, "not a task -> {query_ids: [...], rank: [int, ...]} mapping, equal lengths")
        run["_per_query"] = data
    return run["_per_query"]


def _per_query_task(v) -> bool:
    return (isinstance(v, dict) and isinstance(v.get("query_ids"), list) and isinstance(v.get("rank"), list)
            and len(v["query_ids"]) == len(v["rank"]) and all(isinstance(r, int) for r in v["rank"]))


def _keyed(ids: list) -> list[tuple]:
    """(query id, occurrence) per query, so repeated ids pair in order."""
    seen: Counter = Counter()
    out = []
    for q in ids:
        out.append((q, seen[q]))
        seen[q] += 1
    return out


def paired_ranks(a: Row, b: Row, task: str):
    """First-hit ranks of the queries both rows answered, paired by (seed, task, query id) over their
    common seeds: (ranks_a, ranks_b, seed of each pair), or a string saying why there are none."""
    seeds_a, seeds_b = a.by_seed(), b.by_seed()
    common = [s for s in seeds_a if s in seeds_b]  # none: pair_by_seed says so
    per_seed_a, per_seed_b = {}, {}
    for s in common:
        pa, pb = load_per_query(seeds_a[s]), load_per_query(seeds_b[s])
        for row, data in ((a, pa), (b, pb)):
            if not data or task not in data:
                return f"no per-query data for {row.label}" + (f" (seed {s})" if len(common) > 1 else "")
        per_seed_a[s], per_seed_b[s] = pa[task], pb[task]
    return pair_by_seed(per_seed_a, per_seed_b)


def pair_by_seed(per_seed_a: dict, per_seed_b: dict):
    """Two runs' first-hit ranks, each seed -> {"query_ids", "rank"}, paired by (seed, query id) over their
    common seeds (repeated ids pair in order): (ranks_a, ranks_b, seed of each pair), or why there are none."""
    common = [s for s in per_seed_a if s in per_seed_b]
    if not common:
        return "no seeds in common"
    ra, rb, seed_of = [], [], []
    for s in common:
        pa, pb = per_seed_a[s], per_seed_b[s]
        b_rank = dict(zip(_keyed(pb["query_ids"]), pb["rank"]))
        for key, r in zip(_keyed(pa["query_ids"]), pa["rank"]):
            if key in b_rank:
                ra.append(r)
                rb.append(b_rank[key])
                seed_of.append(s)
    if not ra:
        return "no queries in common"
    return np.asarray(ra), np.asarray(rb), np.asarray(seed_of)


def paired_test(a: Row, b: Row, task: str, metric: str) -> tuple[PairedTest, list[float]] | str:
    """The paired permutation test of a - b on `metric`'s per-query outcome and the mean difference within
    each common seed, or why it cannot run."""
    paired = paired_ranks(a, b, task)
    return paired if isinstance(paired, str) else paired_ranks_test(*paired, metric)


def paired_ranks_test(ra, rb, seed_of, metric: str) -> tuple[PairedTest, list[float]] | str:
    """`paired_test` on ranks already paired (`pair_by_seed`): the test of a - b on `metric`'s per-query
    outcome and the mean difference within each seed that has pairs, or why it cannot run."""
    try:
        sa, sb = per_query_scores(ra, metric), per_query_scores(rb, metric)
        test = paired_permutation_test(sa, sb)
    except ValueError as e:
        return str(e)
    return test, [float(np.mean(sa[seed_of == s] - sb[seed_of == s])) for s in dict.fromkeys(seed_of.tolist())]


def verdict(test: PairedTest, per_seed: list[float], p_adjusted: float) -> str:
    """holds / reversed when the (family-adjusted) p < ALPHA and every seed's mean difference has the pooled
    sign (the queries of one seed share one trained model: one lucky seed alone must not decide);
    else not separated."""
    if p_adjusted >= ALPHA:
        return "not separated"
    sign = np.sign(test.mean_diff)
    if any(np.sign(d) != sign for d in per_seed):
        return "not separated (the seeds disagree in sign)"
    found = "holds" if sign > 0 else "reversed"
    return found if len(per_seed) > 1 else f"{found} (one seed in common: the spread over seeds is untested)"


def fmt_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _diff(a: Row, b: Row, t: PairedTest, pairs: bool = False) -> str:
    over = f" over {t.n_pairs} query pairs" if pairs else ""
    return f"{a.label} − {b.label} = {100 * t.mean_diff:+.1f} points{over}, {fmt_p(t.p_value)}"


def orderings(rows: list[Row], reference: dict, tasks: list[str], metric: str) -> list[str]:
    """For each task, every pair of rows with runs whose paper `metric` values differ: does ours agree?"""
    lines = []
    for task in tasks:
        paper = [(r, reference["rows"][r.ref_key][task][metric]) for r in rows
                 if r.runs and r.ref_key and metric in (reference["rows"][r.ref_key].get(task) or {})]
        paper.sort(key=lambda rv: -rv[1])
        pairs = [(a, b) for i, a in enumerate(paper) for b in paper[i + 1:] if a[1] != b[1]]
        if not pairs:
            continue
        lines += ["", f"Orderings, {task} {metric} (paired sign-flip permutation test over queries pooled "
                      f"across seeds, Holm-adjusted over the {len(pairs)} pairs; separated at p < {ALPHA} with "
                      "every seed's difference of one sign):"]
        tests = [paired_test(a, b, task, metric) for (a, _), (b, _) in pairs]
        adjusted = iter(holm([t[0].p_value for t in tests if not isinstance(t, str)]))
        for ((a, va), (b, vb)), t in zip(pairs, tests):
            head = f"- paper: {a.label} > {b.label} ({fmt_paper(va)} vs {fmt_paper(vb)}); ours: "
            if isinstance(t, str):
                lines.append(head + t)
                continue
            p_adj = next(adjusted)
            lines.append(head + f"{_diff(a, b, t[0])} (adjusted {fmt_p(p_adj)}) → {verdict(t[0], t[1], p_adj)}")
    return lines


def resolve_row(rows: list[Row], spec: str) -> Row:
    """The row labelled `spec`, else the one row whose label contains it (--compare)."""
    exact = [r for r in rows if r.runs and r.label == spec]
    found = exact or [r for r in rows if r.runs and spec in r.label]
    if len(found) != 1:
        which = "no row" if not found else f"{len(found)} rows ({'; '.join(r.label for r in found)})"
        rows_with_runs = "; ".join(r.label for r in rows if r.runs)
        raise ReportError("--compare", f"{spec!r} matches {which}; rows: {rows_with_runs}")
    return found[0]


def compare(rows: list[Row], specs: list[str], tasks: list[str], metrics: list[str]) -> list[str]:
    """--compare A B: the paired test of every shown task and metric."""
    a, b = (resolve_row(rows, s) for s in specs)
    lines = ["", f"Paired test, {a.label} vs {b.label} (sign-flip permutation over queries pooled across "
                 "common seeds):"]
    for task in tasks:
        for m in metrics:
            t = paired_test(a, b, task, m)
            if isinstance(t, str):
                lines.append(f"- {task} {m}: {t}")
                continue
            seeds = ", ".join(f"{100 * d:+.1f}" for d in t[1])
            lines.append(f"- {task} {m}: {_diff(a, b, t[0], pairs=True)}; per seed {seeds}")
    return lines


def provenance_warnings(runs: list[dict], rows: list[Row]) -> list[str]:
    """Why the rows of one table may not be comparable: several git commits, unknown commits, dirty
    trees (results.json's provenance.git), or one seed repeated within a row."""
    git = [(r.get("provenance") or {}).get("git") or {} for r in runs]
    commits = Counter(g.get("commit") for g in git if g.get("commit"))
    unknown = sum(not g.get("commit") for g in git)
    dirty = sum(g.get("dirty") is True for g in git)
    out = []
    if len(commits) > 1:
        listed = ", ".join(f"{c[:10]} ({n} run{'s' * (n > 1)})" for c, n in commits.most_common())
        out.append(f"runs come from {len(commits)} git commits: {listed}; rows may differ by code, not config alone")
    if unknown:
        out.append(f"{unknown} of {len(runs)} runs record no git commit (results.json without "
                   "provenance.git.commit): their code is unknown")
    if dirty:
        out.append(f"{dirty} of {len(runs)} runs were made from a dirty work tree: their code is not committed")
    for row in rows:
        repeated = [s for s, n in Counter(r.get("seed") for r in row.runs).items() if n > 1]
        if repeated:
            out.append(f"row {row.label!r} has several runs of seed {', '.join(map(str, repeated))}: "
                       "paired tests use the first")
    return out
