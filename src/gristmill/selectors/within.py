"""Within-cluster choices shared by the cluster-quota selectors (SSP, DBP).

Given each cluster's quota, keep that many of its rows: the farthest from the centroid
("hard", least prototypical), the closest ("easy") or a seeded uniform subset ("random").
"""

from __future__ import annotations

import numpy as np

from gristmill.selectors.sampling import sample_uniform


def keep_per_cluster(members: list[np.ndarray], quotas: np.ndarray, distance: np.ndarray,
                      keep: str, rng: np.random.Generator) -> np.ndarray:
    """(m,) int64 sorted positions: `quotas[c]` rows of each cluster, chosen by `keep`.

    "hard" keeps the largest `distance` (ties: lower pool position), "easy" the smallest,
    "random" a uniform subset drawn from `rng`. Shared by SSP and DBP.
    """
    kept = []
    for positions, quota in zip(members, quotas, strict=True):
        if quota == 0:
            continue
        if keep == "random":
            kept.append(positions[sample_uniform(len(positions), int(quota), rng)])
            continue
        key = -distance[positions] if keep == "hard" else distance[positions]
        kept.append(positions[np.lexsort((positions, key))[:quota]])
    if not kept:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate(kept)).astype(np.int64)
