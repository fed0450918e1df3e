"""The random baseline: uniform (or weighted) sampling without replacement, optionally per domain.

Every selector should be compared with this at equal budget (ALGORITHMS.md 8.1). Use it plain
for the uniform baseline, with `stratify=True` for the domain-stratified ("balanced") random
baseline that RDS+ found much stronger at scale, and with `score_column` to draw rows with
probability proportional to a non-negative column (successive-draw semantics).

All three share one path: Gumbel-top-k on log-weights (ALGORITHMS.md 10.3), zeros when
unweighted. The unweighted draw is exactly
`np.sort(gumbel_top_k(np.zeros(n), budget, np.random.default_rng(seed)))`; `dsir` relies on that
equality ("target == pool gives uniform sampling").
"""

from __future__ import annotations

import numpy as np

from gristmill.errors import ConfigError
from gristmill.selectors.pool import Pool
from gristmill.selectors.quota import allocate_quota
from gristmill.selectors.result import SelectionResult
from gristmill.selectors.sampling import gumbel_top_k


def select(pool: Pool, budget: int, *, seed: int, score_column: str | None = None,
           stratify: bool = False) -> SelectionResult:
    """Draw `budget` pool rows at random without replacement.

    Args:
        pool: the rows to choose from.
        budget: rows to keep, 0 <= budget <= pool.size (and <= the rows of positive weight
            when weighted).
        seed: seeds the draw; per-domain generators come from `SeedSequence(seed).spawn`.
        score_column: a numeric corpus column of non-negative weights; rows are drawn with
            probability proportional to it (rows of weight 0 never). None: uniform.
        stratify: split the budget across domains in proportion to their pool share
            (`allocate_quota`, largest remainder) and draw within each domain.

    Returns:
        The selection; `scores` (n,) float32 is NaN when unweighted, else log(weight) (-inf
        for weight 0). `stats` holds the pool and selected rows per domain.
    """
    log_weights = _log_weights(pool, score_column)
    drawable = int(np.isfinite(log_weights).sum())
    if budget > drawable:
        what = "pool rows" if score_column is None else f"rows of positive {score_column!r}"
        raise ConfigError(f"`budget` is {budget:,} rows but there are only {drawable:,} "
                          f"{what}; lower the budget or use another column")
    if stratify:
        selected, quotas = _stratified(pool, log_weights, budget, seed)
    else:
        selected = np.sort(gumbel_top_k(log_weights, budget, np.random.default_rng(seed)))
        quotas = None
    scores = np.full(pool.size, np.nan) if score_column is None else log_weights
    stats = _domain_stats(pool, selected, quotas)
    params = {"score_column": score_column, "stratify": bool(stratify)}
    return SelectionResult(selected, scores, "not_sampled", stats=stats, params=params)


def _log_weights(pool: Pool, score_column: str | None) -> np.ndarray:
    """(n,) float64 log-weights: zeros when unweighted, log(column) otherwise (-inf for 0)."""
    if score_column is None:
        return np.zeros(pool.size)
    weights = np.asarray(pool.column(score_column), dtype=np.float64)
    if np.any(weights < 0):
        bad = np.flatnonzero(weights < 0)[:5]
        raise ConfigError(f"`score_column` {score_column!r} must be >= 0 to serve as sampling "
                          f"weights, but pool positions {bad.tolist()} are negative; pass a "
                          "non-negative column (e.g. exp of a score)")
    with np.errstate(divide="ignore"):
        return np.log(weights)


def _stratified(pool: Pool, log_weights: np.ndarray, budget: int, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Proportional per-domain quotas (ALGORITHMS.md 8.1), then one draw per domain."""
    codes = np.asarray(pool.domains, dtype=np.int64)
    num_domains = max(len(pool.domain_names), int(codes.max()) + 1 if len(codes) else 0)
    sizes = np.bincount(codes, minlength=num_domains)
    drawable = np.bincount(codes, weights=np.isfinite(log_weights), minlength=num_domains)
    # Target = the domain's pool share of the budget; a domain short of drawable rows gives
    # its leftover to the others (capped-simplex projection in allocate_quota).
    target = budget * sizes / max(1, len(codes))
    quotas = allocate_quota(target, budget, upper=drawable.astype(np.int64))
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(num_domains)]
    parts = []
    for domain in range(num_domains):
        members = np.flatnonzero(codes == domain)
        parts.append(members[gumbel_top_k(log_weights[members], int(quotas[domain]),
                                          rngs[domain])])
    return np.sort(np.concatenate(parts)).astype(np.int64), quotas


def _domain_stats(pool: Pool, selected: np.ndarray, quotas: np.ndarray | None) -> dict:
    codes = np.asarray(pool.domains, dtype=np.int64)
    names = list(pool.domain_names)
    names += [f"domain_{i}" for i in range(len(names), int(codes.max(initial=-1)) + 1)]
    pool_counts = np.bincount(codes, minlength=len(names))
    kept_counts = np.bincount(codes[selected], minlength=len(names))
    stats = {
        "pool_per_domain": {n: int(c) for n, c in zip(names, pool_counts, strict=True)},
        "selected_per_domain": {n: int(c) for n, c in zip(names, kept_counts, strict=True)},
    }
    if quotas is not None:
        stats["quota_per_domain"] = {n: int(q) for n, q in zip(names, quotas, strict=True)}
    return stats
