"""DBP (ALGORITHMS.md 3.3) and SSP (3.2): quotas on planted clusters, temperature limits, the
quota bounds, keep-hard within clusters, and option errors."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import blobs, unit

from gristmill.errors import ConfigError
from gristmill.selectors import Pool, select


def _counts(pool: Pool, selected: np.ndarray) -> list[int]:
    return np.bincount(pool.labels[selected], minlength=pool.num_clusters).tolist()


def _assert_keeps_farthest(pool: Pool, selected: np.ndarray, distance: np.ndarray) -> None:
    kept = np.isin(np.arange(pool.size), selected)
    for cluster in range(pool.num_clusters):
        inside = pool.labels == cluster
        if kept[inside].any() and (~kept[inside]).any():
            assert distance[inside & kept].min() >= distance[inside & ~kept].max()


def _pool(sizes: list[int], spread: list[float] | None = None, seed: int = 0) -> Pool:
    vectors, labels = blobs(sizes, dim=16, spread=spread, seed=seed)
    return Pool.from_arrays(vectors, labels=labels)


def test_dbp_gives_a_diffuse_cluster_more_than_a_tight_one() -> None:
    pool = _pool([50] * 4, spread=[0.05, 0.6, 0.05, 0.6])
    result = select("dbp", pool, 80, seed=0)
    quotas = result.stats["quotas"]
    assert min(quotas[1], quotas[3]) > max(quotas[0], quotas[2])  # observed [17, 23, 17, 23]
    assert result.stats["d_intra"][1] > 10 * result.stats["d_intra"][0]  # observed 0.145, 0.0011
    assert _counts(pool, result.selected) == quotas


def test_dbp_tends_to_uniform_as_tau_grows() -> None:
    pool = _pool([10, 40, 40, 40], spread=[0.05, 0.6, 0.3, 0.1])
    quotas = select("dbp", pool, 80, seed=0, tau=1e6).stats["quotas"]
    # Uniform would be 20 each; cluster 0 holds only 10, the rest share the other 70.
    assert quotas[0] == 10 and max(quotas[1:]) - min(quotas[1:]) <= 1  # observed [10, 24, 23, 23]


def test_dbp_small_tau_fills_the_most_complex_cluster() -> None:
    pool = _pool([50] * 4, spread=[0.05, 0.6, 0.3, 0.1])
    top = int(np.argmax(select("dbp", pool, 30, seed=0).stats["complexity"]))
    alone = select("dbp", pool, 30, seed=0, tau=1e-4, floor=0.0).stats["quotas"]
    assert alone[top] == 30 and sum(alone) == 30
    # With the default floor every cluster keeps floor(30 / 4 * 0.5) = 3 rows first.
    floored = select("dbp", pool, 30, seed=0, tau=1e-4).stats["quotas"]
    assert floored[top] == 21 and all(q == 3 for c, q in enumerate(floored) if c != top)


@pytest.mark.parametrize("tau", [0.05, 0.5, 5.0])
@pytest.mark.parametrize("budget", [4, 17, 80, 150, 200])
def test_dbp_quotas_sum_to_budget_within_bounds(budget: int, tau: float) -> None:
    pool = _pool([10, 30, 60, 100], spread=[0.6, 0.05, 0.3, 0.2])
    result = select("dbp", pool, budget, seed=0, tau=tau)
    quotas, sizes = np.array(result.stats["quotas"]), np.array([10, 30, 60, 100])
    lower = np.minimum(np.floor(budget / 4 * 0.5), sizes - 1)
    assert quotas.sum() == budget and np.all(lower <= quotas) and np.all(quotas <= sizes)
    assert _counts(pool, result.selected) == quotas.tolist()


def test_dbp_keep_hard_takes_the_farthest_rows() -> None:
    pool = _pool([30, 30, 30], spread=[0.2, 0.4, 0.6])
    result = select("dbp", pool, 40, seed=0)
    distance = 1.0 - pool.cosine_to_centroid()
    np.testing.assert_allclose(result.scores, distance)
    _assert_keeps_farthest(pool, result.selected, distance)


def test_dbp_inter_and_intra_distances_known_answer() -> None:
    # Centroids e1, e2 and (e1 + e2)/sqrt2; two members per cluster at +-10 degrees off it.
    centroids = unit(np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 0]]))
    tilt = np.array([0, 0, np.tan(np.radians(10))])
    vectors = unit(np.repeat(centroids, 2, axis=0) + np.tile([tilt, -tilt], (3, 1)))
    pool = Pool.from_arrays(vectors, labels=np.repeat([0, 1, 2], 2), centroids=centroids)
    stats = select("dbp", pool, 3, seed=0, neighbours=2).stats
    half = 1 - np.cos(np.radians(45))
    np.testing.assert_allclose(stats["d_inter"], [(half + 1) / 2, (half + 1) / 2, half],
                               rtol=1e-5)
    np.testing.assert_allclose(stats["d_intra"], [1 - np.cos(np.radians(10))] * 3, rtol=1e-4)


def test_dbp_empty_cluster_gets_no_quota() -> None:
    vectors, labels = blobs([30, 30, 30, 30], dim=16)
    centroids = Pool.from_arrays(vectors, labels=labels).centroids
    keep = labels != 2
    pool = Pool.from_arrays(vectors[keep], labels=labels[keep], centroids=centroids)
    result = select("dbp", pool, 45, seed=0)
    assert result.stats["quotas"][2] == 0 and sum(result.stats["quotas"]) == 45
    assert result.stats["d_intra"][2] is None and result.stats["complexity"][2] is None


def test_dbp_random_keep_honours_quotas_and_seed() -> None:
    pool = _pool([30, 30, 30], spread=[0.2, 0.4, 0.6])
    first = select("dbp", pool, 40, seed=1, keep="random")
    again = select("dbp", pool, 40, seed=1, keep="random")
    other = select("dbp", pool, 40, seed=2, keep="random")
    np.testing.assert_array_equal(first.selected, again.selected)
    assert not np.array_equal(first.selected, other.selected)
    assert _counts(pool, first.selected) == first.stats["quotas"]


@pytest.mark.parametrize(("params", "match"), [
    ({"tau": 0.0}, "tau"), ({"tau": -1.0}, "tau"), ({"floor": 1.5}, "floor"),
    ({"floor": -0.1}, "floor"), ({"keep": "easy"}, "keep"), ({"neighbours": 0}, "neighbours"),
])
def test_dbp_bad_options_raise(clustered_pool: Pool, params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        select("dbp", clustered_pool, 40, seed=0, **params)


def test_dbp_refuses_non_spherical_clusters() -> None:
    vectors, labels = blobs([20, 20])
    pool = Pool.from_arrays(vectors, labels=labels, spherical=False)
    with pytest.raises(ConfigError, match="spherical"):
        select("dbp", pool, 10, seed=0)


def test_ssp_quotas_are_proportional_and_farthest_kept() -> None:
    pool = _pool([20, 40, 60])
    result = select("ssp", pool, 60, seed=0)
    assert result.stats["quotas"] == [10, 20, 30] == _counts(pool, result.selected)
    distance = 1.0 - pool.cosine_to_centroid()
    np.testing.assert_allclose(result.scores, distance)
    _assert_keeps_farthest(pool, result.selected, distance)
    easy = select("ssp", pool, 60, seed=0, keep="easy")
    _assert_keeps_farthest(pool, easy.selected, -distance)


def test_ssp_squared_l2_keeps_the_largest_distance() -> None:
    vectors, labels = blobs([25, 35])
    scale = np.random.default_rng(0).uniform(0.5, 2.0, size=(60, 1))
    pool = Pool.from_arrays(vectors * scale, labels=labels, spherical=False)
    result = select("ssp", pool, 24, seed=0)
    assert result.stats["quotas"] == [10, 14]
    np.testing.assert_allclose(result.scores, pool.dist)
    _assert_keeps_farthest(pool, result.selected, pool.dist)


def test_ssp_ties_go_to_the_lower_pool_position() -> None:
    far, near = unit(np.array([[1.0, 1.0]])), unit(np.array([[1.0, 0.1]]))
    vectors = np.concatenate([near, far, far, near, far])
    pool = Pool.from_arrays(vectors, labels=np.zeros(5, np.int32),
                            centroids=np.array([[1.0, 0.0]]))
    assert select("ssp", pool, 2, seed=0).selected.tolist() == [1, 2]


def test_ssp_bad_keep_raises(clustered_pool: Pool) -> None:
    with pytest.raises(ConfigError, match="keep"):
        select("ssp", clustered_pool, 40, seed=0, keep="medium")


def test_conformance_dbp(clustered_pool: Pool, check_selector) -> None:
    check_selector("dbp", clustered_pool, 40)


def test_conformance_ssp(clustered_pool: Pool, check_selector) -> None:
    check_selector("ssp", clustered_pool, 40)
