"""Facility-location coreset with CRAIG weights (Mirzasoleiman et al. 2020; ALGORITHMS.md 8.4).

Chooses the `budget` rows S that maximise F(S) = sum_i max_{j in S} s_ij, so that every pool
row has a similar chosen row (a medoid). F is monotone submodular with s_ij >= 0, so greedy
reaches at least (1 - 1/e) of the optimum; lazy greedy (Minoux 1978) gets the same answer with
far fewer gain evaluations, because marginal gains only shrink as S grows.

Similarities live on a sparse kNN graph from an exact FAISS `IndexFlatIP` search over unit
rows: s_ij = 1 + cos(e_i, e_j) in [0, 2] when j is one of the `knn` nearest rows of i (i itself
included), 0 otherwise, so memory is O(n * knn) instead of O(n^2) (section 8.4, "Scale"). The
shift by 1 keeps s_ij >= 0, which the guarantee needs (section 1.7). Above `local_above` rows a
clustered pool solves each cluster separately on a size-proportional share of the budget, as
CRAIG and CoLM do per class or source.

Each kept row is weighted by CRAIG's gamma_j: the number of pool rows whose most similar kept
row is j (train with it as a per-example loss weight).
"""

from __future__ import annotations

import heapq
import logging

import faiss
import numpy as np
from scipy import sparse

from gristmill.errors import ConfigError
from gristmill.selectors.pool import Pool
from gristmill.selectors.quota import proportional_quota
from gristmill.selectors.result import SelectionResult

log = logging.getLogger(__name__)

#: Similarity of a row with itself (1 + cos = 2), the largest s_ij can be.
_SELF = 2.0
#: Initial heap bounds come from a vectorised column sum whose rounding may differ from the
#: per-column gain by a few ulp; inflating them keeps them upper bounds, so lazy greedy still
#: picks exactly what plain greedy picks.
_BOUND_SLACK = 1.0 + 1e-9


def select(pool: Pool, budget: int, *, seed: int, knn: int = 20,
           local_above: int = 50_000) -> SelectionResult:
    """Lazy-greedy facility location on a kNN similarity graph, with CRAIG weights.

    Args:
        pool: the rows; vectors are compared as unit rows.
        budget: rows to keep, 1 <= budget <= pool.size.
        seed: unused (the greedy is deterministic: ties go to the lowest pool position); kept
            for the selector interface.
        knn: neighbours per row in the similarity graph, >= 1 (capped at the pool size; with
            knn >= rows per graph the graph is complete, i.e. dense facility location).
        local_above: pools larger than this are solved per cluster when they have clusters.

    Returns:
        A `SelectionResult` with reason "covered" and `weights` (m,) float32 gamma_j, summing
        to pool.size. `scores` (n,) float32: for a kept row, its marginal gain when it was
        picked; for any other row, its similarity (1 + cos) to the kept row it is credited to.
        `stats`: `objective` F(S) on the graph(s), `knn`, `mode` ("global" or
        "cluster-local") and, cluster-local, `quotas` per cluster id.

    Example:
        >>> pool = Pool.from_arrays(np.array([[1, 0], [1, 0.1], [0, 1]]))
        >>> select(pool, 2, seed=0, knn=3).weights.tolist()
        [2.0, 1.0]
    """
    _check_options(pool, budget, knn, local_above)
    knn = min(knn, pool.size)
    params = {"knn": knn, "local_above": local_above}
    if budget == pool.size:
        # Every row is its own medoid: no graph needed.
        return SelectionResult(selected=np.arange(pool.size),
                               scores=np.full(pool.size, _SELF, np.float32), reason="covered",
                               stats={"objective": _SELF * pool.size, "knn": knn,
                                      "mode": "global"}, params=params)
    groups, quotas, mode = _groups(pool, budget, local_above)
    scores = np.full(pool.size, np.nan, dtype=np.float32)
    medoid = np.full(pool.size, -1, dtype=np.int64)
    chosen, objective = [], 0.0
    for rows, quota in pool.track(list(zip(groups, quotas, strict=True)),
                                  "facility-location: groups"):
        graph = _knn_graph(pool.vectors(rows), knn)
        order, gains = _lazy_greedy(graph, quota)
        local_medoid, similarity = _assign(graph, order)
        scores[rows], scores[rows[order]] = similarity, gains
        medoid[rows] = np.where(local_medoid >= 0, rows[np.maximum(local_medoid, 0)], -1)
        chosen.append(rows[order])
        objective += float(np.nansum(similarity))
    selected = np.sort(np.concatenate(chosen))
    _credit_uncovered(pool, selected, medoid, scores)
    weights = np.bincount(np.searchsorted(selected, medoid), minlength=len(selected))
    stats = {"objective": objective, "knn": knn, "mode": mode}
    if mode == "cluster-local":
        stats["quotas"] = _per_cluster(pool, groups, quotas)
    return SelectionResult(selected=selected, scores=scores, reason="covered",
                           weights=weights.astype(np.float32), stats=stats, params=params)


def _check_options(pool: Pool, budget: int, knn: int, local_above: int) -> None:
    if not 1 <= budget <= pool.size:
        raise ConfigError(f"`budget` must be in [1, {pool.size:,}] rows, got {budget:,}; lower "
                          "it or pass a larger pool")
    if knn < 1:
        raise ConfigError(f"`knn` must be at least 1 neighbour, got {knn}; use e.g. 20 (the "
                          "default), or the pool size for dense facility location")
    if local_above < 0:
        raise ConfigError(f"`local_above` must be >= 0 rows, got {local_above}; use e.g. "
                          "50000 (0 runs cluster-local whenever the pool has clusters)")


def _groups(pool: Pool, budget: int, local_above: int
            ) -> tuple[list[np.ndarray], list[int], str]:
    """The row groups solved separately (clusters, or the whole pool) and their budgets."""
    if pool.size > local_above and pool.labels is not None:
        members = [rows for rows in pool.members() if len(rows)]
        sizes = np.array([len(rows) for rows in members], dtype=np.int64)
        quotas = proportional_quota(sizes, budget)
        kept = [i for i, quota in enumerate(quotas) if quota > 0]
        return [members[i] for i in kept], [int(quotas[i]) for i in kept], "cluster-local"
    if pool.size > local_above:
        log.warning("facility-location on %s rows without clusters builds one kNN graph: "
                    "O(n^2 * d) = %.2g multiply-adds; pass --clusters to run it cluster-local",
                    f"{pool.size:,}", float(pool.size) ** 2 * pool.dim)
    return [np.arange(pool.size, dtype=np.int64)], [budget], "global"


def _knn_graph(vectors: np.ndarray, knn: int) -> sparse.csc_matrix:
    """(m, m) CSC float64 graph: entry (i, j) = 1 + cos(e_i, e_j) for j in kNN(i), i included.

    Column j then lists the rows i that j could serve, so a marginal gain is one slice.
    """
    m = len(vectors)
    k = min(knn, m)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    sims, neighbours = index.search(vectors, k)
    own = np.arange(m)[:, None]
    is_self = neighbours == own
    # Exact duplicates can push a row out of its own list (tied similarity): put it back in
    # place of its least similar neighbour, since s_ii is what makes a kept row cover itself.
    lost = ~is_self.any(axis=1)
    neighbours[lost, -1] = own[lost, 0]
    is_self[lost, -1] = True
    values = np.clip(1.0 + sims.astype(np.float64), 0.0, _SELF)
    values[is_self] = _SELF
    rows = np.repeat(np.arange(m), k)
    graph = sparse.csr_matrix((values.ravel(), (rows, neighbours.ravel())), shape=(m, m))
    return graph.tocsc()


def _gain(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, cover: np.ndarray,
          j: int) -> float:
    """Marginal gain of column j: sum_i max(0, s_ij - cover_i) over its slice."""
    lo, hi = indptr[j], indptr[j + 1]
    return float(np.maximum(data[lo:hi] - cover[indices[lo:hi]], 0.0).sum())


def _take(graph: sparse.csc_matrix, cover: np.ndarray, j: int) -> None:
    """cover_i <- max(cover_i, s_ij) for the rows column j serves."""
    lo, hi = graph.indptr[j], graph.indptr[j + 1]
    rows = graph.indices[lo:hi]
    cover[rows] = np.maximum(cover[rows], graph.data[lo:hi])


def _lazy_greedy(graph: sparse.csc_matrix, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Lazy greedy: a heap of stale upper bounds, re-evaluated only when on top.

    Heap entries are (-gain, j), so among equal bounds the lowest position comes out first; a
    bound re-evaluated in the current step that is still on top beats every other entry's
    bound, hence its true gain too (gains never grow): the same pick as plain greedy, ties
    (highest gain, then lowest position) included.

    Returns:
        (budget,) int64 local positions in pick order and (budget,) float64 their gains.
    """
    indptr, indices, data = graph.indptr, graph.indices, graph.data
    cover = np.zeros(graph.shape[0], dtype=np.float64)
    bounds = np.add.reduceat(data, indptr[:-1]) * _BOUND_SLACK
    heap = list(zip((-bounds).tolist(), range(len(bounds)), strict=True))
    heapq.heapify(heap)
    fresh = [-1] * len(bounds)  # step at which each bound was last evaluated
    order, gains = [], []
    while len(order) < budget:
        bound, j = heapq.heappop(heap)
        step = len(order)
        if fresh[j] != step:
            gain = _gain(indptr, indices, data, cover, j)
            fresh[j] = step
            if heap and (-gain, j) > heap[0]:
                heapq.heappush(heap, (-gain, j))
                continue
            bound = -gain
        order.append(j)
        gains.append(-bound)
        _take(graph, cover, j)
    return np.array(order, dtype=np.int64), np.array(gains, dtype=np.float64)


def _plain_greedy(graph: sparse.csc_matrix, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference greedy for tests: every gain re-evaluated every step (highest gain, then
    lowest position). Same return as `_lazy_greedy`."""
    indptr, indices, data = graph.indptr, graph.indices, graph.data
    cover = np.zeros(graph.shape[0], dtype=np.float64)
    taken = np.zeros(graph.shape[0], dtype=bool)
    order, gains = [], []
    for _ in range(budget):
        best, best_gain = -1, -1.0
        for j in np.flatnonzero(~taken).tolist():
            gain = _gain(indptr, indices, data, cover, j)
            if gain > best_gain:
                best, best_gain = j, gain
        order.append(best)
        gains.append(best_gain)
        taken[best] = True
        _take(graph, cover, best)
    return np.array(order, dtype=np.int64), np.array(gains, dtype=np.float64)


def _assign(graph: sparse.csc_matrix, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's most similar kept row within its kNN list (ties: lowest position).

    Returns:
        (m,) int64 local medoid (-1: no kept row in its list) and (m,) float64 its similarity
        (NaN where -1). Kept rows are their own medoid.
    """
    coo = graph.tocoo()
    kept = np.zeros(graph.shape[0], dtype=bool)
    kept[order] = True
    mask = kept[coo.col]
    row, col, val = coo.row[mask], coo.col[mask], coo.data[mask]
    ranked = np.lexsort((col, -val, row))
    row, col, val = row[ranked], col[ranked], val[ranked]
    first = np.ones(len(row), dtype=bool)
    first[1:] = row[1:] != row[:-1]
    medoid = np.full(graph.shape[0], -1, dtype=np.int64)
    similarity = np.full(graph.shape[0], np.nan)
    medoid[row[first]], similarity[row[first]] = col[first], val[first]
    medoid[order], similarity[order] = order, _SELF
    return medoid, similarity


def _credit_uncovered(pool: Pool, selected: np.ndarray, medoid: np.ndarray,
                      scores: np.ndarray) -> None:
    """Rows with no kept row in their kNN list: credit the nearest kept row (FAISS search)."""
    missing = np.flatnonzero(medoid < 0)
    if missing.size == 0:
        return
    index = faiss.IndexFlatIP(pool.dim)
    index.add(pool.vectors(selected))
    sims, nearest = index.search(pool.vectors(missing), 1)
    medoid[missing] = selected[nearest[:, 0]]
    scores[missing] = np.clip(1.0 + sims[:, 0], 0.0, _SELF)


def _per_cluster(pool: Pool, groups: list[np.ndarray], quotas: list[int]) -> list[int]:
    """Quotas indexed by cluster id (0 for empty or unfunded clusters)."""
    out = [0] * pool.num_clusters
    for rows, quota in zip(groups, quotas, strict=True):
        out[int(pool.labels[rows[0]])] = quota
    return out
