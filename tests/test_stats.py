"""genretr.stats: replicate summaries and the paired sign-flip permutation test, against hand-computed cases."""
import math
from math import comb

import numpy as np
import pytest

from genretr.stats import holm, paired_permutation_test, summary


def test_summary_hand_computed():
    s = summary([0.12, 0.15, 0.21])
    # mean 0.16; deviations -0.04, -0.01, 0.05 -> squares sum 0.0042, / (n - 1) = 0.0021
    assert (s.mean, s.n) == (pytest.approx(0.16), 3)
    assert s.std == pytest.approx(math.sqrt(0.0021))
    assert summary([2.0, 4.0]).std == pytest.approx(math.sqrt(2.0))   # ddof=1, not 1.0 (ddof=0)


def test_summary_single_empty_and_nan():
    one = summary([0.3])
    assert (one.mean, one.n) == (0.3, 1) and math.isnan(one.std)
    assert summary([]).n == 0 and math.isnan(summary([]).mean)
    s = summary([1.0, float("nan"), 3.0])
    assert (s.mean, s.n) == (2.0, 2)


def _test(d, **kw):
    """The test of differences `d` (as a - 0)."""
    return paired_permutation_test(np.asarray(d, float), np.zeros(len(d)), **kw)


def test_exact_all_same_sign():
    # d = 1, 2, 3, 4: of the 16 sign patterns only all-plus and all-minus reach |sum| = 10.
    t = _test([1, 2, 3, 4])
    assert t.exact and t.n_nonzero == 4 and t.n_pairs == 4
    assert t.p_value == pytest.approx(2 / 16) and t.mean_diff == pytest.approx(2.5)


def test_exact_mixed_signs():
    # d = 1, 2, 3, -4, sum 2; the 16 sums are 10 - 2 * (subset sum of {1, 2, 3, 4}):
    # 10 8 6 4 2 4 2 0 0 -2 -4 -2 -4 -6 -8 -10 -- all but the two zeros reach |2|.
    assert _test([1, 2, 3, -4]).p_value == pytest.approx(14 / 16)


def test_exact_zero_differences_are_not_flipped_but_count_in_the_mean():
    # d = 1, 1, 1, -1, 0: four non-zero ±1, sum 2; patterns with |sum| >= 2: sums ±4 (1 each) and ±2 (4 each).
    t = _test([1, 1, 1, -1, 0])
    assert (t.n_pairs, t.n_nonzero) == (5, 4)
    assert t.p_value == pytest.approx(10 / 16) and t.mean_diff == pytest.approx(2 / 5)


def test_exact_is_the_sign_test_for_hit_indicators():
    # R@K differences are -1, 0, +1: 6 wins, 3 losses -> two-sided binomial sign test over 9.
    a = [1] * 6 + [0] * 3 + [1, 0]
    b = [0] * 6 + [1] * 3 + [1, 0]
    t = paired_permutation_test(a, b)
    assert t.n_nonzero == 9 and t.exact
    assert t.p_value == pytest.approx(2 * sum(comb(9, k) for k in range(4)) / 2 ** 9)  # 260 / 512


def test_no_differences_and_symmetry():
    t = paired_permutation_test([0.5, 1.0, 0.0], [0.5, 1.0, 0.0])
    assert (t.p_value, t.mean_diff, t.n_nonzero) == (1.0, 0.0, 0)
    a, b = [1.0, 0.5, 0.2, 1.0, 0.0], [0.0, 0.5, 1.0, 0.1, 0.0]
    ab, ba = paired_permutation_test(a, b), paired_permutation_test(b, a)
    assert ab.p_value == ba.p_value and ab.mean_diff == -ba.mean_diff


def test_monte_carlo_agrees_with_exact_and_is_deterministic():
    rng = np.random.default_rng(1)
    d = rng.normal(0.1, 1.0, size=17)
    exact = _test(d, max_exact=17)
    mc = _test(d)
    assert exact.exact and not mc.exact and mc.n_nonzero == 17
    assert 0.02 < exact.p_value < 0.98                   # a p-value that sampling error could move
    assert mc.p_value == pytest.approx(exact.p_value, abs=0.015)   # 10,000 draws: sd <= 0.005
    assert _test(d).p_value == mc.p_value                # fixed RNG seed
    assert _test(d, seed=5).p_value != mc.p_value


def test_monte_carlo_floor():
    # 40 wins, no loss: no random pattern reaches |40| in 10,000 draws, and p is (1 + 0) / (1 + 10,000), not 0.
    t = paired_permutation_test(np.ones(40), np.zeros(40))
    assert t.p_value == pytest.approx(1 / 10_001) and t.mean_diff == 1.0


def test_bad_input():
    with pytest.raises(ValueError):
        paired_permutation_test([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        paired_permutation_test([], [])
    with pytest.raises(ValueError):
        paired_permutation_test(np.ones((2, 2)), np.ones((2, 2)))


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.04 (m = 3): 0.03, max(0.03, 0.04) = 0.04, max(0.04, 0.04) = 0.04; order kept
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.2]) == pytest.approx([0.2]) and holm([]) == []
