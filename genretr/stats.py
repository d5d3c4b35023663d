"""Replicate summaries and a paired test over queries, for genretr.report (pure numpy).

`summary`: mean, sample standard deviation (ddof=1; NaN for a single value) and n.

`paired_permutation_test`: the two-sided paired sign-flip permutation test of a mean difference
(Fisher 1935; Good, *Permutation Tests*, 2005, Sec. 3.6).  Under H0 the two outcomes of each pair are
exchangeable, so each difference d_i is as likely to be -d_i; the p-value is the share of sign patterns
whose |sum| reaches the observed |sum d_i|.  Zero differences are the same under either sign, so only the
m non-zero ones are flipped: all 2^m patterns when m <= `max_exact` (an exact p-value), otherwise
`n_permutations` random patterns from a fixed RNG seed with p = (1 + hits) / (1 + n_permutations)
(Phipson & Smyth 2010, never 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_EXACT = 16
N_PERMUTATIONS = 10_000


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample std (ddof=1); NaN when n < 2
    n: int


@dataclass(frozen=True)
class PairedTest:
    mean_diff: float  # mean of a - b over all pairs, zero differences included
    p_value: float  # two-sided
    n_pairs: int
    n_nonzero: int
    exact: bool  # every sign pattern enumerated (else Monte Carlo)


def summary(values) -> Summary:
    """Mean, sample std (ddof=1) and count of `values`, NaNs left out."""
    x = np.asarray(values, dtype=float).ravel()
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return Summary(float("nan"), float("nan"), 0)
    return Summary(float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else float("nan"), len(x))


def paired_permutation_test(a, b, n_permutations: int = N_PERMUTATIONS, seed: int = 0,
                            max_exact: int = MAX_EXACT) -> PairedTest:
    """Two-sided paired sign-flip permutation test of mean(a - b) = 0 (module docstring)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired samples must be two 1-D arrays of one length, got {a.shape} and {b.shape}")
    if len(a) == 0:
        raise ValueError("no pairs to test")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    d = a - b
    nonzero = d[d != 0]
    m = len(nonzero)
    observed = abs(nonzero.sum())
    tol = 1e-9 * np.abs(nonzero).sum()  # sums equal up to rounding count as reaching the observed one
    if m <= max_exact:
        signs = 1 - 2 * ((np.arange(2 ** m)[:, None] >> np.arange(m)) & 1)
        p = float(np.mean(np.abs(signs @ nonzero) >= observed - tol))
    else:
        rng, hits, done = np.random.default_rng(seed), 0, 0
        chunk = max(1, min(n_permutations, 4_000_000 // m))
        while done < n_permutations:
            k = min(chunk, n_permutations - done)
            signs = rng.integers(0, 2, size=(k, m), dtype=np.int8) * 2 - 1
            hits += int(np.count_nonzero(np.abs(signs @ nonzero) >= observed - tol))
            done += k
        p = (1 + hits) / (1 + n_permutations)
    return PairedTest(float(d.mean()), p, len(d), m, m <= max_exact)


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (Holm 1979): the k-th smallest is multiplied by
    m - k + 1, made monotone, capped at 1.  Rejecting where the adjusted p < alpha keeps the chance of any
    false "separated" in the family at or below alpha."""
    p = np.asarray(list(p_values), dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - k) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()

