"""SSP pruning: keep the least prototypical rows of each cluster (ALGORITHMS.md section 3.2).

Sorscher et al. 2022 ("Beyond neural scaling laws") score a row's difficulty by its distance to
its nearest k-means centroid: with abundant data keep the hardest (farthest, least
prototypical) rows, with scarce data the easiest. As in the DBP repo's web-scale version
(`which_to_keep=hard`), every cluster keeps a share of the budget, here proportional to its
pool size, and inside a cluster the farthest rows are kept first.
"""

from __future__ import annotations

import numpy as np

from gristmill.errors import ConfigError
from gristmill.selectors.pool import Pool
from gristmill.selectors.quota import proportional_quota
from gristmill.selectors.result import SelectionResult
from gristmill.selectors.within import keep_per_cluster
from gristmill.storage.clusters import COSINE_SIMILARITY

NEEDS_CLUSTERS = True
KEEPS = ("hard", "easy", "random")


def select(pool: Pool, budget: int, *, seed: int, keep: str = "hard") -> SelectionResult:
    """Keep `budget` rows, cluster quotas proportional to cluster size.

    Args:
        pool: clustered pool; `pool.dist` may be a cosine similarity (spherical clusters) or a
            squared L2 distance.
        budget: rows to keep.
        seed: seeds `keep="random"`.
        keep: "hard" (farthest from the centroid), "easy" (closest) or "random" (uniform
            within each cluster's quota).

    Returns:
        `SelectionResult` with scores (n,) float32 = distance to the centroid (1 - cosine, or
        squared L2); reason "prototypical"; stats["quotas"] per cluster id.

    Example:
        >>> select(pool, 1000, seed=0).stats["quotas"]          # doctest: +SKIP
    """
    if keep not in KEEPS:
        raise ConfigError(f"`keep` must be one of {', '.join(KEEPS)}, got {keep!r}")
    members = pool.members()
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    quotas = proportional_quota(sizes, budget)
    distance = _centroid_distance(pool)
    selected = keep_per_cluster(members, quotas, distance, keep, np.random.default_rng(seed))
    stats = {"quotas": quotas.tolist(), "sizes": sizes.tolist()}
    return SelectionResult(selected, distance, "prototypical", stats=stats,
                           params={"keep": keep})


def _centroid_distance(pool: Pool) -> np.ndarray:
    """(n,) float32 distance to the centroid: 1 - cosine, or the squared L2 as stored."""
    assert pool.dist is not None
    if pool.dist_metric == COSINE_SIMILARITY:
        return (1.0 - pool.dist).astype(np.float32)
    return pool.dist.astype(np.float32)
