"""RDS+: keep the pool rows most similar to a target set, taking turns over the target examples.

Use it when a few examples of the task you care about exist (dev or few-shot examples) and were
embedded with the same model as the pool. Method: Ivison et al., "Large-Scale Data Selection for
Instruction Tuning" (arXiv 2503.01807), Algorithm 1 with `selection_method=max`
(ALGORITHMS.md 4.2): every target (query) point ranks the pool by cosine, then the queries take
turns, each popping its best item not yet chosen, until the budget is filled. It is round-robin
over *queries*, not the top rows of the max over queries, so a target with a dense neighbourhood
cannot take the whole budget.

Scale (ALGORITHMS.md 4.3 and 4.6): the (queries x pool) score matrix is never held. One pass over
pool chunks keeps each query's top k (k = ceil(3 budget / queries)) and each pool row's running
max cosine; a query whose list runs out (its rows were taken by other queries) is re-queried
with twice the k.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gristmill.errors import ConfigError, InputError
from gristmill.selectors.pool import CHUNK_ROWS, Pool
from gristmill.selectors.result import SelectionResult
from gristmill.storage.embeddings import EmbeddingStore

#: Candidates kept per query = OVERSAMPLE * budget / queries (ALGORITHMS.md 4.3).
OVERSAMPLE = 3
#: Scores computed per block (queries x chunk rows): 2**24 float32 is 64 MB.
BLOCK_ENTRIES = 1 << 24

Target = np.ndarray | str | Path


def select(pool: Pool, budget: int, *, seed: int, target: Target | None = None
           ) -> SelectionResult:
    """Round-robin RDS+ selection of `budget` pool rows toward `target`.

    Args:
        pool: the rows to choose from.
        budget: rows to keep, 0 <= budget <= pool.size.
        seed: unused (the method is deterministic; ties go to the lower pool position).
        target: (m, d) float target embeddings, or the path of an embedding store written by
            `gristmill embed` (rows left NaN by `--selection` are skipped) or of a `.npy` file.

    Returns:
        The selection. `scores` (n,) float32: for a kept row, the cosine of the query that
        picked it; for a dropped row, its max cosine over the queries.
    """
    if target is None:
        raise ConfigError("rds needs `target`: pass --target EMB (an embedding store of the "
                          "target examples, or an (m, d) .npy array)")
    queries = _load_target(target, pool)
    n, m = pool.size, len(queries)
    k = min(n, max(1, math.ceil(OVERSAMPLE * budget / m)))
    # Keeping everything needs only the running max, not the lists.
    idx, val, row_max = _top_k(pool, queries, 1 if budget >= n else k)
    if budget >= n:
        # Everything is kept: no turns to take, so no picks to count.
        selected, picked_by, picks, requeries = np.arange(n), None, None, 0
    else:
        selected, picked_by, picks, requeries = _round_robin(pool, queries, idx, val, budget)
    scores = row_max.copy()
    if picked_by is not None:
        scores[picked_by[0]] = picked_by[1]
    stats = {"num_targets": m, "k": k, "requeries": requeries, "picks_per_target": picks}
    params = {"target": _describe(target), "selection_method": "max"}
    return SelectionResult(np.sort(selected), scores, "off_target", stats=stats, params=params)


def _load_target(target: Target, pool: Pool) -> np.ndarray:
    """The target rows as (m, d) float32 unit vectors, checked against `pool`."""
    if isinstance(target, str | Path):
        vectors = _read_target(Path(target), pool)
    else:
        vectors = np.asarray(target, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise InputError(f"target must hold at least one (d,) vector, got shape "
                         f"{vectors.shape}; pass an (m, d) array or a non-empty store")
    if vectors.shape[1] != pool.dim:
        raise InputError(f"target set with a different dimension: target vectors are "
                         f"{vectors.shape[1]}-d but the pool's are {pool.dim}-d; embed the "
                         "target with the pool's model")
    norms = np.linalg.norm(vectors, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if len(bad):
        raise InputError(f"target rows {bad[:5].tolist()} (first {min(5, len(bad))} of "
                         f"{len(bad)}) are NaN, inf or zero; drop or re-embed them")
    return (vectors / norms[:, None]).astype(np.float32)


def _read_target(path: Path, pool: Pool) -> np.ndarray:
    if path.is_dir():
        store = EmbeddingStore.open(path)
        _check_model(store, pool)
        vectors = store.to_numpy()
        # Rows outside an `embed --selection` are all NaN: they are not target examples.
        return vectors[~np.isnan(vectors).all(axis=1)]
    if path.suffix == ".npy" and path.is_file():
        return np.load(path).astype(np.float32)
    raise InputError(f"target {str(path)!r} is neither an embedding store directory nor a "
                     ".npy file; pass one of those, or an (m, d) array")


def _check_model(store: EmbeddingStore, pool: Pool) -> None:
    if pool.embeddings is None:
        return
    ours, theirs = pool.embeddings.manifest.get("model"), store.manifest.get("model")
    if ours != theirs:
        raise InputError(f"target {store.path} was embedded with {theirs!r} but the pool "
                         f"with {ours!r}; vectors of two models are not comparable: embed the "
                         "target with the pool's model")


def _describe(target: Target) -> str:
    if isinstance(target, str | Path):
        return str(target)
    return f"array {tuple(np.shape(target))}"


def _top_k(pool: Pool, queries: np.ndarray, k: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's k best pool rows, and each pool row's max cosine, in one streamed pass.

    Returns:
        idx (m, k) int64 pool positions and val (m, k) float32 cosines, each row sorted by
        cosine descending, ties by position; row_max (n,) float32.
    """
    m = len(queries)
    idx, val = np.empty((m, 0), np.int64), np.empty((m, 0), np.float32)
    row_max = np.empty(pool.size, np.float32)
    chunk_rows = max(1, min(CHUNK_ROWS, BLOCK_ENTRIES // m))
    for positions, vectors in pool.iter_chunks(chunk_rows):
        sims = queries @ vectors.T
        row_max[positions] = sims.max(axis=0)
        if idx.shape[1] == k:  # skip pool rows that beat no query's current k-th best
            useful = (sims > val.min(axis=1, keepdims=True)).any(axis=0)
            positions, sims = positions[useful], sims[:, useful]
        idx = np.concatenate([idx, np.broadcast_to(positions, sims.shape)], axis=1)
        val = np.concatenate([val, sims], axis=1)
        if idx.shape[1] > k:
            idx, val = _keep_best(idx, val, k)
    # Candidates are in position order, so a stable sort on -cosine breaks ties by position.
    order = np.argsort(-val, axis=1, kind="stable")
    return np.take_along_axis(idx, order, 1), np.take_along_axis(val, order, 1), row_max


def _keep_best(idx: np.ndarray, val: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep each row's k largest values, ties to the earlier column, in column order.

    Linear time (a partition, no sort): everything above the k-th value, plus the first of the
    entries equal to it until k are kept.
    """
    width = val.shape[1]
    kth = np.partition(val, width - k, axis=1)[:, width - k, None]
    keep = val >= kth
    excess = np.flatnonzero(keep.sum(axis=1) > k)
    if len(excess):  # rare: ties at the k-th value; the earliest ones win
        tied = val[excess] == kth[excess]
        need = k - (val[excess] > kth[excess]).sum(axis=1, keepdims=True)
        keep[excess] &= ~tied | (np.cumsum(tied, axis=1) <= need)
    cols = np.nonzero(keep)[1].reshape(len(val), k)
    return np.take_along_axis(idx, cols, 1), np.take_along_axis(val, cols, 1)


def _round_robin(pool: Pool, queries: np.ndarray, idx: np.ndarray, val: np.ndarray,
                 budget: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], list[int], int]:
    """Queries take turns, each taking its best row not yet chosen (ALGORITHMS.md 4.2).

    Returns:
        (budget,) int64 chosen positions in pick order; (those positions, the cosine of the
        query that picked each); picks per query; how many times a list was re-queried.
    """
    lists, cosines = [row.tolist() for row in idx], [row.tolist() for row in val]
    heads, picks = [0] * len(queries), [0] * len(queries)
    chosen, order, order_cos, requeries = bytearray(pool.size), [], [], 0
    while len(order) < budget:
        for q in range(min(len(queries), budget - len(order))):
            head = _next_free(lists[q], heads[q], chosen)
            while head == len(lists[q]):
                # Every listed row went to other queries: fetch twice as many (4.3).
                requeries += 1
                lists[q], cosines[q] = _requery(pool, queries[q], 2 * len(lists[q]))
                head = _next_free(lists[q], 0, chosen)
            chosen[lists[q][head]] = 1
            order.append(lists[q][head])
            order_cos.append(cosines[q][head])
            heads[q], picks[q] = head + 1, picks[q] + 1
    positions = np.asarray(order, dtype=np.int64)
    return positions, (positions, np.asarray(order_cos, np.float32)), picks, requeries


def _next_free(row: list[int], head: int, chosen: bytearray) -> int:
    """First index >= head of `row` whose pool position is not chosen (len(row) if none)."""
    while head < len(row) and chosen[row[head]]:
        head += 1
    return head


def _requery(pool: Pool, query: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """One query's top min(k, n) list, again; with k = n it holds every row, so it cannot run
    out while a row is unchosen."""
    idx, val, _ = _top_k(pool, query[None, :], min(pool.size, k))
    return idx[0].tolist(), val[0].tolist()
