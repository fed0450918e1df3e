"""DBP: concept-complexity quotas per cluster, then keep the hardest rows (ALGORITHMS.md 3.3).

Abbas et al., ICLR 2024 ("Effective pruning of web-scale datasets based on complexity of
concept clusters", repo amro-kamal/effective_pruning). A cluster's complexity is
`C_j = d_inter(j) * d_intra(j)`: a dense cluster (small mean distance of its members to the
centroid) or one close to other concepts (small mean distance to its nearest other centroids)
is redundant and gets less of the budget. Quotas follow `softmax(C / tau)` through the shared
capped-simplex allocator (which replaces the repo's OSQP solve) with a floor of
`floor * budget / K` rows per cluster; each cluster then keeps its farthest rows (as SSP).
"""

from __future__ import annotations

import numpy as np

from gristmill.errors import ConfigError
from gristmill.selectors.pool import Pool
from gristmill.selectors.quota import allocate_quota
from gristmill.selectors.result import SelectionResult
from gristmill.selectors.within import keep_per_cluster

NEEDS_CLUSTERS = True
SPHERICAL_ONLY = True
KEEPS = ("hard", "random")


def select(pool: Pool, budget: int, *, seed: int, tau: float = 0.5, floor: float = 0.5,
           neighbours: int = 20, keep: str = "hard") -> SelectionResult:
    """Keep `budget` rows with cluster quotas `~ budget * softmax(d_inter * d_intra / tau)`.

    Args:
        pool: spherical clusters required (cosines to unit centroids).
        budget: rows to keep.
        seed: seeds `keep="random"`.
        tau: softmax temperature, > 0 (repo default 0.5); large tau tends to equal quotas,
            small tau fills the most complex clusters first.
        floor: in [0, 1]; every cluster keeps at least `floor(budget / K * floor)` rows (and at
            most its size - 1 through that floor), K = non-empty clusters. The repo's
            `cls_bal_ratio`, default 0.5: a strong default, hence a visible parameter.
        neighbours: nearest other centroids averaged in `d_inter` (the paper's l = 20).
        keep: "hard" (farthest from the centroid first, ties by pool position) or "random".

    Returns:
        `SelectionResult` with scores (n,) float32 = 1 - cosine to the centroid; reason
        "prototypical"; stats with per-cluster `complexity`, `probability`, `quotas`,
        `d_intra`, `d_inter` (None for clusters empty in this pool).

    Example:
        >>> select(pool, 5000, seed=0, tau=0.5).stats["quotas"]    # doctest: +SKIP
    """
    _check_options(tau, floor, neighbours, keep)
    members = pool.members()
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    live = np.flatnonzero(sizes > 0)
    distance = (1.0 - pool.cosine_to_centroid()).astype(np.float32)
    d_intra = np.bincount(pool.labels, weights=distance, minlength=len(sizes))[live] / sizes[live]
    d_inter = _inter_distance(pool.centroids[live], neighbours)
    complexity = _fill_nan(d_inter * d_intra)
    probability = _softmax(complexity / tau)
    quotas = np.zeros(len(sizes), dtype=np.int64)
    quotas[live] = allocate_quota(budget * probability, budget,
                                  lower=_floor_quota(budget, sizes[live], floor),
                                  upper=sizes[live])
    selected = keep_per_cluster(members, quotas, distance, keep, np.random.default_rng(seed))
    stats = {name: _per_cluster(values, live, len(sizes)) for name, values in (
        ("complexity", complexity), ("probability", probability), ("d_intra", d_intra),
        ("d_inter", d_inter))}
    stats["quotas"] = quotas.tolist()
    params = {"tau": float(tau), "floor": float(floor),
              "neighbours": int(min(neighbours, max(len(live) - 1, 0))), "keep": keep}
    return SelectionResult(selected, distance, "prototypical", stats=stats, params=params)


def _check_options(tau: float, floor: float, neighbours: int, keep: str) -> None:
    if not (tau > 0 and np.isfinite(tau)):
        raise ConfigError(f"`tau` must be a finite number > 0, got {tau}; the repo default "
                          "is 0.5 (larger: more uniform quotas)")
    if not 0.0 <= floor <= 1.0:
        raise ConfigError(f"`floor` must be in [0, 1] (share of the uniform quota every "
                          f"cluster keeps), got {floor}")
    if neighbours < 1:
        raise ConfigError(f"`neighbours` must be >= 1, got {neighbours}; the paper uses 20")
    if keep not in KEEPS:
        raise ConfigError(f"`keep` must be one of {', '.join(KEEPS)}, got {keep!r}")


def _inter_distance(centroids: np.ndarray, neighbours: int) -> np.ndarray:
    """(m,) float64 mean `1 - mu_j . mu_k` over the `neighbours` nearest other centroids.

    NaN for every cluster when there is no other centroid.
    """
    import faiss

    count = len(centroids)
    hits = min(neighbours, count - 1)
    if hits < 1:
        return np.full(count, np.nan)
    unit = np.ascontiguousarray(centroids, dtype=np.float32)
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    sims, ids = index.search(unit, hits + 1)
    # Drop the self hit (the repo drops the first column; with duplicate centroids self may
    # not come first, or not at all: then drop the last hit instead).
    others = ids != np.arange(count)[:, None]
    no_self = others.all(axis=1)
    others[no_self, -1] = False
    return (1.0 - sims[others].reshape(count, hits).astype(np.float64)).mean(axis=1)


def _fill_nan(values: np.ndarray) -> np.ndarray:
    """NaNs (no other centroid) replaced by the mean of the rest, as the repo does; 0 if none."""
    finite = np.isfinite(values)
    return np.where(finite, values, values[finite].mean() if finite.any() else 0.0)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def _floor_quota(budget: int, sizes: np.ndarray, floor: float) -> np.ndarray:
    """lb_j = min(floor(budget / K * floor), size_j - 1), at least 0; feasible by construction."""
    lower = np.minimum(np.floor(budget / len(sizes) * floor), sizes - 1).clip(min=0)
    # K * floor(budget * floor / K) <= budget for floor <= 1; guard float rounding anyway.
    return lower if lower.sum() <= budget else np.zeros_like(lower)


def _per_cluster(values: np.ndarray, live: np.ndarray, k: int) -> list[float | None]:
    """Per-cluster-id list for the manifest: None for clusters empty in this pool."""
    out: list[float | None] = [None] * k
    for cluster, value in zip(live.tolist(), values.tolist(), strict=True):
        out[cluster] = float(value)
    return out
