"""SemDeDup: remove semantic near-duplicates within each cluster (ALGORITHMS.md section 3.1).

Abbas et al. 2023 (facebookresearch/SemDeDup, `semdedup.py`): inside each spherical k-means
cluster, order the members (farthest from the centroid first by default), give each item `j`
the largest cosine `m_j` to any *earlier* item, and remove `j` iff `m_j > 1 - eps`. Earlier
items count even when they were removed themselves, exactly as the reference does: a chain
A~B, B~C, A!~C (in that order) loses both B and C. Duplicates in different clusters are never
compared. `m_j` is computed with a row-chunked Gram matrix, so memory is
O(chunk_rows * cluster size), never the dense cluster x cluster matrix (section 0).

Use it as a filter (`eps`, no budget), or to keep an exact row count (`budget` or
`keep_fraction`): the eps that keeps that many rows is then reported in `params["eps"]`.
"""

from __future__ import annotations

import math

import numpy as np

from gristmill.errors import ConfigError
from gristmill.selectors.pool import Pool
from gristmill.selectors.result import SelectionResult

NEEDS_CLUSTERS = True
SPHERICAL_ONLY = True
FILTER = True
ORDERS = ("hard", "easy", "random")
_GIB = 2**30
# Rows per Gram block, at most: measured fastest on 2 cores (OpenBLAS, d = 384): 335 ms for a
# 12k-row cluster at 512 vs 354 ms at 1024 and 382 ms at 128; a 1k-row cluster takes 3.8 ms
# vs 4.1 ms as one 1k x 1k square (which also computes the pairs the triangle skips).
_BLOCK_ROWS = 512
# The reported eps stays inside the open interval (0, 2) the option accepts: float32 resolution
# of m_j at the low end, the largest float below 2 at the high end.
_EPS_MIN, _EPS_MAX = float(np.finfo(np.float32).eps), math.nextafter(2.0, 0.0)


def select(pool: Pool, budget: int | None, *, seed: int, eps: float | None = None,
           keep_fraction: float | None = None, order: str = "hard", chunk_rows: int = 4096,
           max_memory_gb: float = 8.0) -> SelectionResult:
    """Drop every row whose cosine to an earlier row of its cluster exceeds `1 - eps`.

    Three ways to call it:

    - `eps` alone (budget None): keep each row with `m_j <= 1 - eps`.
    - `budget` (rows) or `keep_fraction` (in (0, 1]; rows = round(fraction * pool size), at
      least 1): keep exactly that many rows, those with the smallest `m_j` (ties: lower pool
      position). Because `m_j` does not depend on eps, this *is* the threshold rule at the eps
      found, computed exactly by order statistics rather than by bisection on eps. The eps is
      reported as `1 - (largest kept m_j)`, clamped into (0, 2); passing it back as `eps`
      gives the same rows unless other rows tie with that largest kept `m_j`.

    Args:
        pool: spherical clusters required (`pool.dist` is the cosine to the centroid).
        budget: rows to keep, or None to filter by `eps`.
        seed: seeds the shuffle of `order="random"`.
        eps: cosine-distance threshold in (0, 2); the paper's LAION runs use 0.03-0.26.
        keep_fraction: fraction of the pool to keep, instead of `budget`.
        order: "hard" (farthest from the centroid first: the paper's default, so the most
            atypical copy of a duplicate group survives), "easy" (closest first) or "random".
        chunk_rows: most rows of the Gram matrix computed at once (blocks are at most 512
            rows, the measured optimum; lower it only to save memory).
        max_memory_gb: refuse to start when the largest cluster's pass needs more than this.

    Returns:
        `SelectionResult` with scores (n,) float32 = `m_j`, -1.0 for the first item of each
        cluster (no earlier item); reason "near_duplicate"; `related` the earlier row each
        row is most similar to (what a dropped row duplicates).

    Example:
        >>> result = select(pool, None, seed=0, eps=0.05)       # doctest: +SKIP
        >>> result.stats["removed"]                             # doctest: +SKIP
    """
    rows = _target_rows(pool.size, budget, eps, keep_fraction)
    _check_options(order, chunk_rows, max_memory_gb)
    members = [m for m in pool.members() if len(m)]
    _check_memory(pool, members, chunk_rows, max_memory_gb)
    similarity, related = _cluster_similarities(pool, members, order, chunk_rows, seed)
    if rows is None:
        assert eps is not None
        selected = np.flatnonzero(similarity.astype(np.float64) <= 1.0 - eps)
    else:
        selected, eps = _keep_least_similar(similarity, rows, len(members))
    removed = pool.size - len(selected)
    stats = {"removed": int(removed), "kept": int(len(selected)), "eps": float(eps),
             "clusters": len(members), "largest_cluster": max(map(len, members), default=0)}
    params = {"eps": float(eps), "keep_fraction": keep_fraction, "order": order,
              "chunk_rows": int(chunk_rows), "mode": "eps" if rows is None else "budget"}
    scores = np.where(np.isfinite(similarity), similarity, -1.0).astype(np.float32)
    return SelectionResult(selected, scores, "near_duplicate", stats=stats, params=params,
                           related=related)


def _target_rows(n: int, budget: int | None, eps: float | None,
                 keep_fraction: float | None) -> int | None:
    """Rows to keep (None: filter by eps), after checking the options are one consistent mode."""
    given = [name for name, value in (("eps", eps), ("budget", budget),
                                      ("keep_fraction", keep_fraction)) if value is not None]
    if not given:
        raise ConfigError("semdedup needs --eps, --keep-fraction or --budget (e.g. --eps 0.05)")
    if len(given) > 1:
        raise ConfigError(f"semdedup takes one of eps, keep_fraction or budget, got "
                          f"{' and '.join(given)}; drop all but one")
    if eps is not None:
        if not 0.0 < eps < 2.0:
            raise ConfigError(f"`eps` must be in (0, 2) (a cosine distance), got {eps}; the "
                              "paper uses 0.03-0.26")
        return None
    if keep_fraction is not None:
        if not 0.0 < keep_fraction <= 1.0:
            raise ConfigError(f"`keep_fraction` must be in (0, 1], got {keep_fraction}")
        return max(1, math.floor(keep_fraction * n + 0.5))
    return budget


def _check_options(order: str, chunk_rows: int, max_memory_gb: float) -> None:
    if order not in ORDERS:
        raise ConfigError(f"`order` must be one of {', '.join(ORDERS)}, got {order!r}")
    if chunk_rows < 1:
        raise ConfigError(f"`chunk_rows` must be >= 1, got {chunk_rows}")
    if not max_memory_gb > 0:
        raise ConfigError(f"`max_memory_gb` must be > 0, got {max_memory_gb}")


def _check_memory(pool: Pool, members: list[np.ndarray], chunk_rows: int,
                  max_memory_gb: float) -> None:
    """Refuse before any work when the largest cluster's block + vectors exceed the limit."""
    if not members:
        return
    cluster = int(np.argmax([len(m) for m in members]))
    size = len(members[cluster])
    need_gib = (min(chunk_rows, _BLOCK_ROWS, size) * size + size * pool.dim) * 4 / _GIB
    if need_gib > max_memory_gb:
        cluster_id = int(pool.labels[members[cluster][0]])
        raise ConfigError(f"semdedup: cluster {cluster_id} has {size:,} rows and needs "
                          f"{need_gib:.1f} GiB (chunk_rows={chunk_rows}), over "
                          f"`max_memory_gb`={max_memory_gb}; re-cluster with more clusters "
                          "(a larger --k) or pass a smaller chunk_rows")


def _cluster_similarities(pool: Pool, members: list[np.ndarray], order: str, chunk_rows: int,
                          seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n,) float32 `m_j` of every pool row (-inf for the first item of its cluster), and
    (n,) int64 pool position of the earlier row reaching it (-1 for first items)."""
    rng = np.random.default_rng(seed)
    cosine = pool.cosine_to_centroid()
    similarity = np.full(pool.size, -np.inf, dtype=np.float32)
    related = np.full(pool.size, -1, dtype=np.int64)
    for positions in pool.track(members, "semdedup: clusters"):
        ordered = _order_cluster(positions, cosine[positions], order, rng)
        vectors = pool.vectors(ordered, normalize=True)
        sims, nearest = _max_earlier(vectors, chunk_rows)
        similarity[ordered] = sims
        related[ordered] = np.where(nearest >= 0, ordered[np.maximum(nearest, 0)], -1)
    return similarity, related


def _order_cluster(positions: np.ndarray, cosine: np.ndarray, order: str,
                   rng: np.random.Generator) -> np.ndarray:
    """Cluster positions in processing order; ties between equal cosines by pool position."""
    if order == "random":
        return positions[rng.permutation(len(positions))]
    key = cosine if order == "hard" else -cosine
    return positions[np.lexsort((positions, key))]


def _max_earlier_similarity(vectors: np.ndarray, chunk_rows: int = 4096) -> np.ndarray:
    """`m_j = max_{i<j} e_i . e_j` for rows already in processing order ((n,) float32)."""
    return _max_earlier(vectors, chunk_rows)[0]


def _max_earlier(vectors: np.ndarray, chunk_rows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """`m_j = max_{i<j} e_i . e_j` and the `i` reaching it, for rows in processing order.

    Block `[s, e)` of items `j` is multiplied against items `0 .. e-1` only (the earlier ones
    and the block itself), and the pairs with `i >= j` in the block's own square are masked.
    That is half the full Gram matrix and O(chunk_rows * n) memory.

    Args:
        vectors: (n, d) float32 unit rows in processing order.
        chunk_rows: items `j` per block (at most `_BLOCK_ROWS`).

    Returns:
        (n,) float32 `m_j` (-inf for the first item: it has no earlier item) and (n,) int64
        index of the most similar earlier item (-1 for the first item).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    chunk_rows = max(1, min(chunk_rows, _BLOCK_ROWS, n))
    out = np.full(n, -np.inf, dtype=np.float32)
    nearest = np.full(n, -1, dtype=np.int64)
    # Strict lower triangle is kept: in the block's square, column i < row j is "earlier".
    upper = np.triu(np.ones((chunk_rows, chunk_rows), dtype=bool))
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        gram = vectors[start:stop] @ vectors[:stop].T
        square = gram[:, start:stop]
        square[upper[: stop - start, : stop - start]] = -np.inf
        best = gram.argmax(axis=1)
        out[start:stop] = gram[np.arange(stop - start), best]
        nearest[start:stop] = best
    nearest[out == -np.inf] = -1
    return out, nearest


def _keep_least_similar(similarity: np.ndarray, rows: int, clusters: int
                        ) -> tuple[np.ndarray, float]:
    """The `rows` positions with the smallest `m_j` (ties: lower position), and the eps found."""
    if rows < clusters:
        raise ConfigError(f"semdedup cannot keep only {rows:,} rows: the first item of each of "
                          f"the {clusters:,} non-empty clusters is always kept; raise the budget "
                          "to at least that, or re-cluster with fewer clusters")
    ranked = np.lexsort((np.arange(len(similarity)), similarity))
    kept = np.sort(ranked[:rows]).astype(np.int64)
    return kept, _eps_for(float(similarity[ranked[rows - 1]]))


def _eps_for(largest_kept: float) -> float:
    """The eps whose threshold `1 - eps` still keeps `largest_kept`, clamped into (0, 2)."""
    if not math.isfinite(largest_kept):
        return _EPS_MAX
    eps = 1.0 - largest_kept
    # 1 - (1 - m) can round below m in float64; step eps down until the kept row stays kept.
    while eps > _EPS_MIN and 1.0 - eps < largest_kept:
        eps = math.nextafter(eps, -math.inf)
    return min(max(eps, _EPS_MIN), _EPS_MAX)
