"""SemDeDup (ALGORITHMS.md 3.1): planted near-duplicates, the chain semantics, eps monotonicity,
the budget path's eps round trip, chunking, and option errors."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import blobs, unit

from gristmill.errors import ConfigError
from gristmill.selectors import Pool, select
from gristmill.selectors.semdedup import _max_earlier_similarity


def _base() -> tuple[np.ndarray, np.ndarray]:
    # 3 blobs x 40 in 32-d, spread 0.6: the largest within-blob cosine is 0.911 (observed), so
    # nothing is a near-duplicate at eps = 0.02 (threshold 0.98) until copies are planted.
    return blobs([40, 40, 40], dim=32, spread=[0.6] * 3, seed=1)


def _base_pool() -> Pool:
    vectors, labels = _base()
    return Pool.from_arrays(vectors, labels=labels)


def _planted() -> tuple[Pool, list[tuple[int, int]]]:
    """The base pool plus 10 copies (5 exact, 5 with 1e-3 noise) appended; returns the pairs."""
    vectors, labels = _base()
    rng = np.random.default_rng(7)
    originals = rng.choice(len(vectors), size=10, replace=False)
    copies = vectors[originals].copy()
    copies[5:] = unit(copies[5:] + 1e-3 * rng.normal(size=copies[5:].shape))
    pool = Pool.from_arrays(np.concatenate([vectors, copies]),
                            labels=np.concatenate([labels, labels[originals]]))
    pairs = [(int(o), len(vectors) + i) for i, o in enumerate(originals)]
    return pool, pairs


def _removed(result, n: int) -> set[int]:
    return set(range(n)) - set(result.selected.tolist())


def test_removes_exactly_the_planted_copies() -> None:
    pool, pairs = _planted()
    result = select("semdedup", pool, None, seed=0, eps=0.02)
    # order="hard" visits the member farther from the centroid first and keeps it; exact copies
    # tie on the cosine, and the tie goes to the lower pool position (the original).
    cosine = pool.cosine_to_centroid()
    expected = {copy if (cosine[copy], copy) > (cosine[orig], orig) else orig
                for orig, copy in pairs}
    assert _removed(result, pool.size) == expected
    assert result.reason == "near_duplicate" and result.stats["removed"] == 10
    assert result.stats["clusters"] == 3


def test_chain_removes_b_and_c() -> None:
    # A, B, C 10 degrees apart in a plane: cos(A,B) = cos(B,C) = 0.985 > 0.95, cos(A,C) = 0.940.
    # The centroid at 60 degrees puts A farthest, so the "hard" order is A, B, C: B goes (A~B)
    # and C goes (B~C) even though B was removed and A !~ C (the reference's semantics).
    angles = np.radians([20.0, 0.0, 10.0])  # pool order C, A, B
    vectors = np.stack([np.cos(angles), np.sin(angles), np.zeros(3)], axis=1)
    centroid = np.array([[np.cos(np.radians(60)), np.sin(np.radians(60)), 0.0]])
    pool = Pool.from_arrays(vectors, labels=np.zeros(3, np.int32), centroids=centroid)
    hard = select("semdedup", pool, None, seed=0, eps=0.05)
    assert hard.selected.tolist() == [1]  # A
    # "easy" visits C, B, A: B goes (C~B), then A (B~A).
    easy = select("semdedup", pool, None, seed=0, eps=0.05, order="easy")
    assert easy.selected.tolist() == [0]  # C
    assert hard.scores[1] == -1.0  # the first item has no earlier item


def test_duplicates_in_different_clusters_are_kept() -> None:
    vectors = unit(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    pool = Pool.from_arrays(vectors, labels=np.array([0, 1, 1], np.int32))
    assert select("semdedup", pool, None, seed=0, eps=0.5).selected.tolist() == [0, 1, 2]


def test_removed_set_grows_with_eps() -> None:
    pool, _ = _planted()
    removed = [_removed(select("semdedup", pool, None, seed=0, eps=eps), pool.size)
               for eps in (0.02, 0.1, 0.2, 0.4)]
    for smaller, larger in zip(removed, removed[1:], strict=False):
        assert smaller <= larger
    # observed removed counts 10, 14, 76, 125 (of 130): nested, and not all equal.
    assert len(removed[0]) < len(removed[-1])


def test_pool_order_does_not_matter_without_ties() -> None:
    vectors, labels = _base()
    perm = np.random.default_rng(3).permutation(len(vectors))
    plain = select("semdedup", Pool.from_arrays(vectors, labels=labels), None, seed=0, eps=0.2)
    shuffled = select("semdedup", Pool.from_arrays(vectors[perm], labels=labels[perm]), None,
                      seed=0, eps=0.2)
    np.testing.assert_array_equal(np.sort(perm[shuffled.selected]), plain.selected)


def test_budget_mode_keeps_exactly_budget_and_eps_round_trips() -> None:
    pool = _base_pool()
    result = select("semdedup", pool, 80, seed=0)
    assert len(result.selected) == 80 and result.params["mode"] == "budget"
    eps = result.params["eps"]  # observed 0.1635
    # No tie at the boundary: the largest kept m_j is strictly below the smallest removed one.
    kept = np.isin(np.arange(pool.size), result.selected)
    assert result.scores[kept].max() < result.scores[~kept].min()
    again = select("semdedup", pool, None, seed=0, eps=eps)
    np.testing.assert_array_equal(again.selected, result.selected)
    half = select("semdedup", pool, None, seed=0, keep_fraction=0.5)
    assert len(half.selected) == 60


def test_chunked_equals_unchunked_on_a_300_row_cluster() -> None:
    vectors, labels = blobs([300], dim=32, spread=[0.6], seed=2)
    pool = Pool.from_arrays(vectors, labels=labels)
    small = select("semdedup", pool, None, seed=0, eps=0.15, chunk_rows=7)
    whole = select("semdedup", pool, None, seed=0, eps=0.15, chunk_rows=4096)
    np.testing.assert_array_equal(small.selected, whole.selected)
    np.testing.assert_allclose(small.scores, whole.scores, atol=1e-6)
    assert 0 < small.stats["removed"] < 300  # observed 149
    # Against the dense float64 definition m_j = max_{i<j} G_ij.
    gram = vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    reference = np.array([gram[:j, j].max() if j else -np.inf for j in range(300)])
    np.testing.assert_allclose(_max_earlier_similarity(vectors, 7), reference, atol=1e-5)


def test_empty_clusters_are_skipped() -> None:
    vectors, labels = blobs([20, 20], dim=8)
    centroids = unit(np.random.default_rng(0).normal(size=(3, 8)))
    pool = Pool.from_arrays(vectors, labels=labels * 2, centroids=centroids)  # cluster 1 empty
    result = select("semdedup", pool, 10, seed=0)
    assert len(result.selected) == 10 and result.stats["clusters"] == 2


@pytest.mark.parametrize(("budget", "params", "match"), [
    (None, {"eps": 0.0}, "eps"),
    (None, {"eps": 2.0}, "eps"),
    (50, {"eps": 0.1}, "one of"),
    (None, {}, "needs --eps"),
    (None, {"keep_fraction": 1.5}, "keep_fraction"),
    (2, {}, "non-empty clusters"),
    (None, {"eps": 0.1, "order": "sideways"}, "order"),
    (None, {"eps": 0.1, "max_memory_gb": 1e-9}, "max_memory_gb"),
])
def test_bad_options_raise(budget: int | None, params: dict, match: str) -> None:
    pool = _base_pool()
    with pytest.raises(ConfigError, match=match):
        select("semdedup", pool, budget, seed=0, **params)


def test_non_spherical_clusters_are_refused() -> None:
    vectors, labels = _base()
    pool = Pool.from_arrays(vectors, labels=labels, spherical=False)
    with pytest.raises(ConfigError, match="spherical"):
        select("semdedup", pool, None, seed=0, eps=0.1)


def test_conformance(clustered_pool: Pool, check_selector) -> None:
    check_selector("semdedup", clustered_pool, 60)
