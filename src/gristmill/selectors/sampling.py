"""Sampling without replacement: uniform, or proportional to weights, via Gumbel-top-k.

`argtopk(log w_i + G_i)` with i.i.d. Gumbel noise `G_i` draws k items without replacement with
the successive-draw probabilities of weights `w` (ALGORITHMS.md section 10.3): vectorised,
seedable and exact, unlike `np.random.choice(replace=False, p=...)` on large arrays.
With equal weights it is a uniform sample, so weighted and unweighted draws share one code path.
"""

from __future__ import annotations

import numpy as np


def gumbel_top_k(log_weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Draw `k` distinct positions with probability proportional to `exp(log_weights)`.

    Args:
        log_weights: (n,) float, log of unnormalised weights; -inf marks an item never drawn.
        k: how many to draw, 0 <= k <= number of finite entries.
        rng: the generator (the caller's seed).

    Returns:
        (k,) int64 positions in draw order (highest perturbed key first).
    """
    log_weights = np.asarray(log_weights, dtype=np.float64)
    n = len(log_weights)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    keys = log_weights + rng.gumbel(size=n)
    if k >= n:
        return np.argsort(-keys, kind="stable").astype(np.int64)
    top = np.argpartition(-keys, k - 1)[:k]
    return top[np.argsort(-keys[top], kind="stable")].astype(np.int64)


def sample_uniform(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """`k` distinct positions of `range(n)`, uniformly (sorted)."""
    return np.sort(gumbel_top_k(np.zeros(n), k, rng))
