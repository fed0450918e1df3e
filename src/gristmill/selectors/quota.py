"""The one quota allocator: split an integer budget across groups, exactly, within bounds.

Serves DBP (softmax quotas), kMQ (uniform quotas with water-filling), per-domain budgets and
every cluster-local selector (ALGORITHMS.md section 10.2). The continuous problem

    min_N  1/2 ||N - target||^2   s.t.  sum(N) = total,  lower <= N <= upper

is the Euclidean projection onto a capped simplex, whose solution is `clip(target + lam, lower,
upper)` for the scalar `lam` that meets the sum (found by bisection: the sum is monotone in
`lam`). DBP's paper solves this QP with OSQP; the closed form needs no solver. Largest-remainder
rounding then gives integers that sum to `total` exactly and stay within the bounds.
"""

from __future__ import annotations

import numpy as np

from gristmill.errors import ConfigError


def allocate_quota(
    target: np.ndarray,
    total: int,
    *,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
) -> np.ndarray:
    """Integer quotas closest to `target` that sum to `total` within `[lower, upper]`.

    Args:
        target: (k,) float, the ideal (fractional) share of each group; it need not sum to
            `total` (the projection shifts it by a constant).
        total: the exact sum of the result.
        lower: (k,) int lower bounds (default 0).
        upper: (k,) int upper bounds, e.g. group sizes (default: unbounded).

    Returns:
        (k,) int64 quotas with `sum == total` and `lower <= quota <= upper`.

    Example:
        >>> allocate_quota(np.array([1.0, 1.0, 1.0]), 7, upper=np.array([1, 10, 10])).tolist()
        [1, 3, 3]
    """
    target = np.asarray(target, dtype=np.float64)
    k = len(target)
    lo = np.zeros(k) if lower is None else np.asarray(lower, dtype=np.float64)
    hi = np.full(k, float(total)) if upper is None else np.asarray(upper, dtype=np.float64)
    hi = np.minimum(hi, float(total))
    if not np.all(np.isfinite(target)):
        raise ConfigError("quota targets must be finite numbers")
    if np.any(lo > hi):
        bad = int(np.argmax(lo > hi))
        raise ConfigError(f"group {bad}: lower bound {lo[bad]:g} exceeds upper bound {hi[bad]:g}")
    if total < lo.sum() or total > hi.sum():
        raise ConfigError(f"cannot allocate {total:,} rows: the groups admit between "
                          f"{int(lo.sum()):,} and {int(hi.sum()):,}")
    continuous = _project(target, float(total), lo, hi)
    return _round(continuous, total, lo, hi)


def _project(target: np.ndarray, total: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """clip(target + lam, lo, hi) with sum == total; lam by bisection."""
    low_lam = float(np.min(lo - target)) - 1.0
    high_lam = float(np.max(hi - target)) + 1.0
    for _ in range(200):
        mid = 0.5 * (low_lam + high_lam)
        if np.clip(target + mid, lo, hi).sum() < total:
            low_lam = mid
        else:
            high_lam = mid
        if high_lam - low_lam < 1e-12 * max(1.0, abs(mid)):
            break
    return np.clip(target + high_lam, lo, hi)


def _round(values: np.ndarray, total: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Largest-remainder rounding that keeps the bounds (ties go to the lower index)."""
    base = np.clip(np.floor(values + 1e-9), lo, hi).astype(np.int64)
    remainder = total - int(base.sum())
    room_up = base < hi
    if remainder > 0:
        frac = np.where(room_up, values - base, -np.inf)
        order = np.lexsort((np.arange(len(values)), -frac))
        order = order[room_up[order]]
        # Numerical slack can leave more units than fractional parts: cycle while room is left.
        while remainder > 0:
            for index in order:
                if remainder == 0:
                    break
                if base[index] < hi[index]:
                    base[index] += 1
                    remainder -= 1
    elif remainder < 0:
        frac = values - base
        order = np.lexsort((np.arange(len(values)), frac))
        while remainder < 0:
            for index in order:
                if remainder == 0:
                    break
                if base[index] > lo[index]:
                    base[index] -= 1
                    remainder += 1
    return base


def proportional_quota(sizes: np.ndarray, total: int) -> np.ndarray:
    """Split `total` across groups in proportion to `sizes`, each capped at its size.

    Example:
        >>> proportional_quota(np.array([20, 40, 60, 0]), 60).tolist()
        [10, 20, 30, 0]
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    return allocate_quota(sizes * (total / max(int(sizes.sum()), 1)), total, upper=sizes)
