"""The shared helpers every selector leans on: `allocate_quota`, budget parsing, Gumbel-top-k.

ALGORITHMS.md 10.2 (one quota allocator: capped-simplex projection plus largest remainder) and
10.3 (sampling without replacement by Gumbel-top-k).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gristmill.errors import ConfigError
from gristmill.selectors.budget import Budget, parse_budget
from gristmill.selectors.quota import allocate_quota
from gristmill.selectors.sampling import gumbel_top_k, sample_uniform

targets = st.lists(st.floats(0.0, 100.0), min_size=1, max_size=8)


@st.composite
def bounded_problems(draw: st.DrawFn) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """(target, feasible total, lower, upper) with 0 <= lower <= upper."""
    target = np.array(draw(targets))
    upper = np.array(draw(st.lists(st.integers(0, 50), min_size=len(target),
                                   max_size=len(target))))
    lower = np.array([draw(st.integers(0, int(u))) for u in upper])
    total = draw(st.integers(int(lower.sum()), int(upper.sum())))
    return target, total, lower, upper


# --- allocate_quota -----------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(bounded_problems())
def test_quota_sums_exactly_within_bounds(problem):
    target, total, lower, upper = problem
    quota = allocate_quota(target, total, lower=lower, upper=upper)
    assert quota.dtype == np.int64 and quota.sum() == total
    assert np.all(lower <= quota) and np.all(quota <= upper)


@settings(max_examples=200, deadline=None)
@given(targets.filter(lambda t: sum(t) > 1e-3), st.integers(0, 1000))
def test_uncapped_quota_is_within_one_of_proportional(raw, total):
    # Scaled to sum to `total`, the target is its own projection: only rounding moves it.
    share = np.array(raw) / sum(raw) * total
    quota = allocate_quota(share, total)
    assert quota.sum() == total
    assert np.all(np.abs(quota - share) < 1 + 1e-9)


@settings(max_examples=200, deadline=None)
@given(bounded_problems(), st.data())
def test_raising_a_target_never_lowers_its_quota(problem, data):
    target, total, lower, upper = problem
    index = data.draw(st.integers(0, len(target) - 1))
    raised = target.copy()
    raised[index] += data.draw(st.floats(0.0, 100.0))
    before = allocate_quota(target, total, lower=lower, upper=upper)
    after = allocate_quota(raised, total, lower=lower, upper=upper)
    assert after[index] >= before[index]


@settings(max_examples=100, deadline=None)
@given(bounded_problems(), st.integers(1, 20))
def test_infeasible_totals_are_refused(problem, excess):
    target, _, lower, upper = problem
    with pytest.raises(ConfigError):
        allocate_quota(target, int(upper.sum()) + excess, lower=lower, upper=upper)
    if lower.sum() >= excess:
        with pytest.raises(ConfigError):
            allocate_quota(target, int(lower.sum()) - excess, lower=lower, upper=upper)


@pytest.mark.parametrize(("target", "total", "kwargs", "expected"), [
    ([1, 1, 1], 7, {"upper": [1, 10, 10]}, [1, 3, 3]),  # small group full, leftover spread
    ([1, 1, 1], 10, {}, [4, 3, 3]),                     # ties go to the lower index
    ([0, 0, 0, 0, 0], 5, {}, [1, 1, 1, 1, 1]),
    ([5, 3, 2], 10, {}, [5, 3, 2]),                     # an integral target is kept
    ([8, 1, 1], 10, {"lower": [0, 3, 3]}, [4, 3, 3]),
    ([1, 2, 3], 0, {}, [0, 0, 0]),
    ([0.2, 0.2, 0.6], 1, {}, [0, 0, 1]),
])
def test_quota_known_answers(target, total, kwargs, expected):
    bounds = {key: np.array(value) for key, value in kwargs.items()}
    assert allocate_quota(np.array(target, float), total, **bounds).tolist() == expected


def test_quota_refuses_bad_bounds_and_targets():
    with pytest.raises(ConfigError, match="lower bound"):
        allocate_quota(np.ones(2), 3, lower=np.array([2, 0]), upper=np.array([1, 5]))
    with pytest.raises(ConfigError, match="finite"):
        allocate_quota(np.array([1.0, np.nan]), 3)


# --- budgets ------------------------------------------------------------------------------

def test_budget_parsing_known_answers():
    assert parse_budget("0.3") == Budget(fraction=0.3)
    assert parse_budget("50000") == Budget(rows=50000)
    assert parse_budget(64) == Budget(rows=64)
    assert parse_budget(0.5) == Budget(fraction=0.5)
    assert parse_budget("0.3").resolve(10) == 3
    assert parse_budget("1.0").resolve(12345) == 12345
    assert parse_budget("0.001").resolve(10) == 1  # never zero rows of a non-empty pool
    assert parse_budget("50000").resolve(50000) == 50000


@pytest.mark.parametrize("spec", [0, -1, "0", "-1", "1.5", "abc", "0.0", "-0.5", "nan", "",
                                  "1e3"])
def test_bad_budgets_are_refused(spec):
    with pytest.raises(ConfigError, match="budget"):
        parse_budget(spec)


def test_row_budget_larger_than_pool_is_refused():
    with pytest.raises(ConfigError, match="only 99"):
        parse_budget("100").resolve(99)


@settings(max_examples=200, deadline=None)
@given(st.floats(1e-6, 1.0), st.integers(1, 10**7))
def test_fraction_resolves_to_the_rounded_share(fraction, pool_rows):
    rows = parse_budget(repr(fraction)).resolve(pool_rows)
    assert 1 <= rows <= pool_rows
    assert rows == 1 or abs(rows - fraction * pool_rows) <= 0.5 + 1e-9


# --- Gumbel-top-k -------------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.floats(-20.0, 20.0), st.just(-np.inf)), min_size=1,
                max_size=40), st.data())
def test_gumbel_top_k_draws_distinct_finite_positions(log_weights, data):
    log_weights = np.array(log_weights)
    finite = int(np.isfinite(log_weights).sum())
    k = data.draw(st.integers(0, finite))
    seed = data.draw(st.integers(0, 2**32 - 1))
    drawn = gumbel_top_k(log_weights, k, np.random.default_rng(seed))
    assert drawn.dtype == np.int64 and len(drawn) == k == len(np.unique(drawn))
    assert np.all(np.isfinite(log_weights[drawn]))


def test_gumbel_top_k_is_seeded_and_sample_uniform_sorted():
    first = gumbel_top_k(np.zeros(50), 10, np.random.default_rng(7))
    again = gumbel_top_k(np.zeros(50), 10, np.random.default_rng(7))
    np.testing.assert_array_equal(first, again)
    uniform = sample_uniform(50, 10, np.random.default_rng(7))
    np.testing.assert_array_equal(uniform, np.sort(first))
    assert len(gumbel_top_k(np.zeros(5), 0, np.random.default_rng(0))) == 0
