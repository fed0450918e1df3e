"""Greedy k-center coreset (Sener & Savarese 2018; ALGORITHMS.md section 8.3).

Chooses `budget` rows so that every pool row lies close to a chosen one. Starting from one
seeded-random row, each step takes the row farthest (Euclidean distance between unit rows) from
the chosen set: the greedy 2-approximation of the k-center problem (Gonzalez 1985), which Sener &
Savarese use as a core-set for active learning. It picks outliers first (maximal coverage), so
pair it with a quality filter when the pool is noisy.

Each step is one matvec over the rows: `O(n * budget * d)` time, `O(n)` extra memory. Above
`local_above` rows, a clustered pool runs the greedy within each cluster on a share of the
budget proportional to the cluster's size (section 8.3's hierarchical variant), which divides
the cost by about the number of clusters.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

from gristmill.errors import ConfigError
from gristmill.selectors.pool import Pool
from gristmill.selectors.quota import proportional_quota
from gristmill.selectors.result import SelectionResult

log = logging.getLogger(__name__)

#: Rows per block of the distance update (bounds the temporaries, not the result).
_CHUNK_ROWS = 65_536
#: `|x|^2 + |c|^2 - 2 x.c` loses all precision near 0 in float32 (rounding ~1e-6 at d = 384),
#: so squared distances below this are recomputed by subtraction: exact duplicates get 0.
_REFINE_BELOW = 1e-4
#: Score of each greedy's seed row, chosen before any centre exists (its delta would be
#: +inf): the largest distance between unit vectors, so scores stay finite.
_SEED_SCORE = 2.0


def select(pool: Pool, budget: int, *, seed: int, local_above: int = 50_000) -> SelectionResult:
    """Greedy k-center: each chosen row is the one farthest from those chosen before it.

    Args:
        pool: the rows; vectors are compared as unit rows.
        budget: rows to keep, 1 <= budget <= pool.size.
        seed: picks the first centre (per cluster in cluster-local mode, from
            `SeedSequence(seed).spawn`); everything after it is deterministic.
        local_above: pools larger than this run cluster-local when they have clusters (and
            otherwise run globally, with a warning about the cost).

    Returns:
        A `SelectionResult` with reason "covered". `scores` (n,) float32: for a chosen row, its
        distance to the centres chosen before it (delta at the moment it was picked; 2.0 for a
        seed row); for any other row, its final distance to the nearest centre (in
        cluster-local mode, the nearest centre of its own cluster). Every score lies in
        [0, 2]. `stats`: `covering_radius` (the largest final distance), `mode` ("global" or
        "cluster-local") and, cluster-local, `quotas` per cluster id.

    Example:
        >>> pool = Pool.from_arrays(np.eye(3))
        >>> select(pool, 2, seed=0).selected.tolist()
        [0, 2]
    """
    _check_options(pool, budget, local_above)
    if budget == pool.size:
        # Every row is its own centre: nothing to search, every distance is 0.
        return _result(np.arange(pool.size), np.zeros(pool.size, np.float32), "global",
                       local_above, {})
    if pool.size > local_above and pool.labels is not None:
        chosen, scores, quotas = _cluster_local(pool, budget, seed)
        return _result(chosen, scores, "cluster-local", local_above, {"quotas": quotas})
    if pool.size > local_above:
        log.warning("kcenter on %s rows without clusters runs globally: O(n * budget * d) = "
                    "%.2g multiply-adds; pass --clusters to run it cluster-local",
                    f"{pool.size:,}", float(pool.size) * budget * pool.dim)
    vectors = pool.vectors(np.arange(pool.size))
    order, scores = _greedy(vectors, budget, np.random.default_rng(seed))
    return _result(order, scores, "global", local_above, {})


def _check_options(pool: Pool, budget: int, local_above: int) -> None:
    if not 1 <= budget <= pool.size:
        raise ConfigError(f"`budget` must be in [1, {pool.size:,}] rows, got {budget:,}; lower "
                          "it or pass a larger pool")
    if local_above < 0:
        raise ConfigError(f"`local_above` must be >= 0 rows, got {local_above}; use e.g. "
                          "50000 (0 runs cluster-local whenever the pool has clusters)")


def _greedy(vectors: np.ndarray, budget: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """Farthest-first traversal of `vectors` ((m, d) float32 unit rows).

    Returns:
        (budget,) int64 local positions in pick order, and (m,) float32 scores as in `select`.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    m = len(vectors)
    order = np.empty(budget, dtype=np.int64)
    picked = np.empty(budget, dtype=np.float32)
    d2 = np.full(m, np.inf, dtype=np.float32)  # squared distance to the chosen set
    norms2 = np.einsum("ij,ij->i", vectors, vectors)
    centre, picked[0] = int(rng.integers(m)), _SEED_SCORE
    for step in range(budget):
        if step:
            # np.argmax takes the first maximum: ties go to the lowest position, and once every
            # remaining delta is 0 (duplicates) it walks the unchosen rows in position order.
            centre = int(np.argmax(d2))
            picked[step] = np.sqrt(max(float(d2[centre]), 0.0))
        order[step] = centre
        _update(vectors, norms2, centre, d2)
        d2[centre] = -1.0  # chosen: never the argmax again
    scores = np.sqrt(np.maximum(d2, 0.0))
    scores[order] = picked
    return order, scores


def _update(vectors: np.ndarray, norms2: np.ndarray, centre: int, d2: np.ndarray) -> None:
    """d2 <- min(d2, ||e_i - e_centre||^2), in row blocks, from one matvec per block.

    `norms2` (m,) float32 holds ||e_i||^2: 1 for unit rows, 0 for an all-zero vector, which
    the unit-row shortcut 2 - 2cos would put at distance sqrt(2) instead of 1.
    """
    point = np.ascontiguousarray(vectors[centre])
    buffer = np.empty(min(len(vectors), _CHUNK_ROWS), dtype=np.float32)
    for start in range(0, len(vectors), _CHUNK_ROWS):
        block = vectors[start:start + _CHUNK_ROWS]
        dist2 = _inner_products(block, point, buffer[:len(block)])
        dist2 *= np.float32(-2.0)
        dist2 += norms2[start:start + _CHUNK_ROWS]
        dist2 += norms2[centre]
        np.maximum(dist2, 0.0, out=dist2)
        close = np.flatnonzero(dist2 < _REFINE_BELOW)
        if close.size:
            diff = block[close] - point
            dist2[close] = np.einsum("ij,ij->i", diff, diff)
        view = d2[start:start + _CHUNK_ROWS]
        np.minimum(view, dist2, out=view)


def _inner_products(block: np.ndarray, point: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[i] = block[i] . point, for (m, d) C-contiguous float32 `block`.

    FAISS's single-threaded SIMD kernel: a multithreaded BLAS gemv this small spends more
    time waking threads than computing (10x slower than one core on a loaded 2-core box).
    """
    rows, dim = block.shape
    faiss.fvec_inner_products_ny(faiss.swig_ptr(out), faiss.swig_ptr(point),
                                 faiss.swig_ptr(block), dim, rows)
    return out


def _cluster_local(pool: Pool, budget: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Greedy within each cluster on a size-proportional share of the budget."""
    members = pool.members()
    sizes = np.array([len(rows) for rows in members], dtype=np.int64)
    quotas = proportional_quota(sizes, budget)
    seeds = np.random.SeedSequence(seed).spawn(len(members))
    scores = np.full(pool.size, np.nan, dtype=np.float32)
    chosen = []
    for cluster in pool.track(np.flatnonzero(quotas).tolist(), "kcenter: clusters"):
        rows = members[cluster]
        rng = np.random.default_rng(seeds[cluster])
        order, local = _greedy(pool.vectors(rows), int(quotas[cluster]), rng)
        chosen.append(rows[order])
        scores[rows] = local
    chosen_rows = np.concatenate(chosen)
    _score_uncovered(pool, chosen_rows, scores)
    return chosen_rows, scores, quotas.tolist()


def _score_uncovered(pool: Pool, chosen: np.ndarray, scores: np.ndarray) -> None:
    """Rows of clusters with no quota: distance to the nearest centre of any cluster."""
    missing = np.flatnonzero(np.isnan(scores))
    if missing.size == 0:
        return
    index = faiss.IndexFlatL2(pool.dim)
    index.add(pool.vectors(np.sort(chosen)))
    dist2, _ = index.search(pool.vectors(missing), 1)
    scores[missing] = np.sqrt(np.maximum(dist2[:, 0], 0.0))


def _result(chosen: np.ndarray, scores: np.ndarray, mode: str, local_above: int,
            extra: dict) -> SelectionResult:
    radius = float(np.max(scores[np.setdiff1d(np.arange(len(scores)), chosen)], initial=0.0))
    return SelectionResult(selected=np.sort(chosen), scores=scores, reason="covered",
                           stats={"covering_radius": radius, "mode": mode, **extra},
                           params={"local_above": local_above})
