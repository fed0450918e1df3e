"""The random baseline (`random`, module uniform.py), kMQ and the iterative refinement state.

ALGORITHMS.md 2.2, 2.3, 2.6 (testable properties), 2.7 (repo pitfalls the code must not repeat)
and 8.1 (uniform and domain-stratified random).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic import blobs

from gristmill.errors import ConfigError
from gristmill.selectors import Pool, kmq, select, uniform
from gristmill.selectors.kmq import IterativeRefiner
from gristmill.selectors.sampling import gumbel_top_k


def _with_column(pool: Pool, values: np.ndarray) -> Pool:
    """Pool.column reads the corpus store; an in-memory pool gets the column patched in."""
    pool.column = lambda name: np.asarray(values, dtype=np.float64)
    return pool


def _inclusion(select_fn, n: int, trials: int) -> np.ndarray:
    """(n,) fraction of seeds 0..trials-1 whose selection includes each position."""
    counts = np.zeros(n)
    for seed in range(trials):
        counts[select_fn(seed).selected] += 1
    return counts / trials


# --- conformance --------------------------------------------------------------------------

def test_random_conforms(clustered_pool, check_selector):
    check_selector("random", clustered_pool, 17)
    check_selector("random", clustered_pool, 17, stratify=True)


def test_weighted_random_conforms(clustered_pool, check_selector):
    weights = np.linspace(0.5, 3.0, clustered_pool.size)
    check_selector("random", _with_column(clustered_pool, weights), 17, score_column="w")


def test_kmq_conforms(clustered_pool, check_selector):
    check_selector("kmq", clustered_pool, 17)
    quality = np.arange(clustered_pool.size) % 7 / 2.0
    check_selector("kmq", _with_column(clustered_pool, quality), 17, score_column="q", tau=0.5)


# --- random -------------------------------------------------------------------------------

def test_random_is_the_plain_gumbel_draw(clustered_pool):
    # dsir's "target == pool is uniform" test relies on this exact equality.
    for seed in range(5):
        expected = np.sort(gumbel_top_k(np.zeros(clustered_pool.size), 23,
                                        np.random.default_rng(seed)))
        got = uniform.select(clustered_pool, 23, seed=seed)
        np.testing.assert_array_equal(got.selected, expected)
        assert got.reason == "not_sampled" and np.isnan(got.scores).all()


def test_random_marginals_are_uniform():
    pool = Pool.from_arrays(np.eye(20))
    freq = _inclusion(lambda s: uniform.select(pool, 5, seed=s), 20, 2000)
    # Expected 0.25 each, sd sqrt(.25 * .75 / 2000) = 0.0097: 5 sd.
    assert np.abs(freq - 0.25).max() < 0.05  # observed max deviation 0.019


def test_weighted_random_prefers_heavy_items():
    pool = _with_column(Pool.from_arrays(np.eye(20)), np.repeat([1.0, 9.0], 10))
    freq = _inclusion(lambda s: uniform.select(pool, 5, seed=s, score_column="w"), 20, 1000)
    light, heavy = freq[:10].mean(), freq[10:].mean()
    assert heavy > 4 * light  # observed 0.44 vs 0.06


def test_weighted_random_zero_weights_and_errors():
    weights = np.array([0.0, 1.0, 2.0, 0.0, 5.0, 1.0])
    pool = _with_column(Pool.from_arrays(np.eye(6)), weights)
    for seed in range(50):
        result = uniform.select(pool, 4, seed=seed, score_column="w")
        np.testing.assert_array_equal(result.selected, [1, 2, 4, 5])
    np.testing.assert_allclose(result.scores[1:3], np.log([1.0, 2.0]), rtol=1e-6)
    with pytest.raises(ConfigError, match="positive"):
        uniform.select(pool, 5, seed=0, score_column="w")
    pool.column = lambda name: weights - 1.0
    with pytest.raises(ConfigError, match=">= 0"):
        uniform.select(pool, 2, seed=0, score_column="w")


def test_stratified_random_is_proportional():
    sizes = [57, 29, 14]
    domains = np.repeat(np.arange(3), sizes).astype(np.int32)
    pool = Pool.from_arrays(np.eye(100), domains=domains, domain_names=["web", "code", "math"])
    for budget, seed in [(23, 0), (23, 1), (50, 2), (7, 3)]:
        result = uniform.select(pool, budget, seed=seed, stratify=True)
        counts = np.bincount(domains[result.selected], minlength=3)
        assert counts.sum() == budget
        assert np.all(np.abs(counts - budget * np.array(sizes) / 100) < 1)
        assert list(result.stats["selected_per_domain"].values()) == counts.tolist()


def test_stratified_weighted_random_moves_budget_off_short_domains():
    domains = np.repeat([0, 1], 10).astype(np.int32)
    weights = np.r_[[1.0, 1.0] + [0.0] * 8, np.ones(10)]  # domain 0: only 2 drawable rows
    pool = _with_column(Pool.from_arrays(np.eye(20), domains=domains,
                                         domain_names=["a", "b"]), weights)
    result = uniform.select(pool, 10, seed=0, score_column="w", stratify=True)
    assert result.stats["quota_per_domain"] == {"a": 2, "b": 8}
    assert set(result.selected[:2]) == {0, 1}


# --- kMQ ----------------------------------------------------------------------------------

def test_kmq_constant_scores_equal_uniform_within_cluster(clustered_pool):
    # ALGORITHMS.md 2.6.1: exp(c / tau) is constant, so the draw is the unweighted one.
    plain = kmq.select(clustered_pool, 37, seed=4)
    pool = _with_column(clustered_pool, np.full(clustered_pool.size, 3.7))
    weighted = kmq.select(pool, 37, seed=4, score_column="q", tau=0.3)
    np.testing.assert_array_equal(plain.selected, weighted.selected)
    assert plain.reason == "over_quota" and np.isnan(plain.scores).all()
    np.testing.assert_allclose(weighted.scores, 3.7, rtol=1e-6)


def test_kmq_quotas_are_uniform_and_exact(clustered_pool):
    result = select("kmq", clustered_pool, 17, seed=0)
    counts = np.bincount(clustered_pool.labels[result.selected], minlength=4)
    assert counts.tolist() == result.stats["quotas"] == [5, 4, 4, 4]
    assert result.stats["num_clusters"] == 4


def test_kmq_water_fills_small_and_empty_clusters():
    # Clusters of 3, 0, 30, 30, 12 rows, budget 40: the repo's floor(40/5) = 8 per cluster
    # keeps only 3 + 0 + 8 + 8 + 8 = 27. Water-filling: level 12.5 over the big clusters.
    vectors, labels = blobs([3, 30, 30, 12], dim=8)
    labels = np.where(labels >= 1, labels + 1, labels)  # cluster 1 is empty
    pool = Pool.from_arrays(vectors, labels=labels)
    result = kmq.select(pool, 40, seed=0)
    counts = np.bincount(labels[result.selected], minlength=5)
    assert counts.sum() == 40 and counts.tolist() == result.stats["quotas"]
    assert counts.tolist() == [3, 0, 13, 12, 12]
    assert result.stats["nonempty_clusters"] == 4 and result.stats["num_clusters"] == 5


def test_kmq_higher_score_higher_inclusion(clustered_pool):
    # ALGORITHMS.md 2.6.3; quality rises with the position inside each blob of 30.
    quality = np.tile(np.linspace(0.0, 3.0, 30), 4)
    pool = _with_column(clustered_pool, quality)
    freq = _inclusion(lambda s: kmq.select(pool, 40, seed=s, score_column="q"), 120, 300)
    per_rank = freq.reshape(4, 30).mean(axis=0)
    assert np.corrcoef(per_rank, quality[:30])[0, 1] > 0.9  # observed 0.98
    assert per_rank[-10:].mean() > 3 * per_rank[:10].mean()  # observed 0.60 vs 0.11


def test_kmq_small_tau_is_top_k_per_cluster(clustered_pool):
    quality = np.random.default_rng(0).uniform(0, 1, clustered_pool.size)
    pool = _with_column(clustered_pool, quality)
    result = kmq.select(pool, 20, seed=9, score_column="q", tau=1e-6)
    expected = [m[np.argsort(-quality[m])[:5]] for m in pool.members()]
    np.testing.assert_array_equal(result.selected, np.sort(np.concatenate(expected)))


def test_kmq_errors(clustered_pool):
    with pytest.raises(ConfigError, match="tau"):
        kmq.select(clustered_pool, 10, seed=0, tau=0.0)
    with pytest.raises(ConfigError, match="clusters"):
        select("kmq", Pool.from_arrays(np.eye(5)), 2, seed=0)


# --- iterative refinement -----------------------------------------------------------------

LABELS = np.repeat(np.arange(4), 50)


def _counts(rows: np.ndarray) -> np.ndarray:
    return np.bincount(LABELS[rows], minlength=4)


def test_refiner_weights_are_a_distribution():
    rng = np.random.default_rng(0)
    for mode in ("multiplicative", "replace"):
        refiner = IterativeRefiner(LABELS, 120, rounds=4, update=mode)
        for _ in range(4):
            refiner.next_round()
            refiner.update(rng.normal(0, 3, 4))
            assert np.all(refiner.weights >= 0)
            assert refiner.weights.sum() == pytest.approx(1.0)


def test_refiner_uniform_losses_give_uniform_rounds():
    refiner = IterativeRefiner(LABELS, 60, rounds=3)
    np.testing.assert_allclose(refiner.weights, 0.25)
    for _ in range(3):
        assert _counts(refiner.next_round()).tolist() == [5, 5, 5, 5]
        refiner.update(np.full(4, 0.7))
        np.testing.assert_allclose(refiner.weights, 0.25)


def test_refiner_moves_budget_off_a_learnt_cluster():
    refiner = IterativeRefiner(LABELS, 120, rounds=4)
    rounds = []
    for _ in range(4):
        rounds.append(_counts(refiner.next_round()))
        refiner.update({0: 0.1, 1: 1.0, 2: 1.0, 3: 1.0})
    # Observed rounds: [8 8 7 7], [3 9 9 9], [2 10 9 9], [0 10 10 10].
    assert rounds[0].tolist() == [8, 8, 7, 7]
    for later in rounds[1:]:
        assert later[0] < rounds[0][0] and later[0] < later[1:].min()
    assert rounds[3][0] <= rounds[2][0] <= rounds[1][0]


def test_multiplicative_weights_are_the_product_of_softmaxes():
    # ALGORITHMS.md 2.6.6: w^T ∝ prod_t softmax(loss^t / tau).
    losses = np.random.default_rng(1).normal(0, 1, (3, 4))
    refiner = IterativeRefiner(LABELS, 90, rounds=3, tau=0.5)
    for loss in losses:
        refiner.next_round()
        refiner.update(loss)
    soft = np.exp(losses / 0.5) / np.exp(losses / 0.5).sum(axis=1, keepdims=True)
    expected = soft.prod(axis=0) / soft.prod(axis=0).sum()
    np.testing.assert_allclose(refiner.weights, expected, rtol=1e-12)


def test_replace_mode_keeps_only_the_last_softmax():
    losses = [np.array([0.1, 1.0, 1.0, 1.0]), np.array([1.0, 0.2, 1.0, 0.5])]
    refiners = {m: IterativeRefiner(LABELS, 90, rounds=3, update=m)
                for m in ("multiplicative", "replace")}
    for refiner in refiners.values():
        for loss in losses:
            refiner.next_round()
            refiner.update(loss)
    last = np.exp(losses[1]) / np.exp(losses[1]).sum()
    np.testing.assert_allclose(refiners["replace"].weights, last)
    assert not np.allclose(refiners["replace"].weights, refiners["multiplicative"].weights)


def test_refiner_never_repeats_and_spends_the_budget_exactly():
    # 101 = 34 + 34 + 33 rows; cluster 0 holds only 6 rows, so it runs out of unseen rows.
    labels = np.r_[np.zeros(6, int), np.repeat([1, 2], 60)]
    refiner = IterativeRefiner(labels, 101, rounds=3, seed=5)
    drawn = []
    for _ in range(3):
        drawn.append(refiner.next_round())
        refiner.update([5.0, 0.0, 0.0])  # cluster 0 keeps asking for more than it has
    assert [len(d) for d in drawn] == [34, 34, 33]
    everything = np.concatenate(drawn)
    assert len(np.unique(everything)) == 101 == len(refiner.selected)
    np.testing.assert_array_equal(np.sort(everything), refiner.selected)
    assert refiner.round == 3
    with pytest.raises(ConfigError, match="rounds"):
        refiner.next_round()


def test_refiner_with_budget_equal_to_pool_takes_everything():
    refiner = IterativeRefiner(LABELS, len(LABELS), rounds=3)
    for _ in range(3):
        refiner.next_round()
        refiner.update([3.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(refiner.selected, np.arange(len(LABELS)))


def test_refiner_missing_losses_are_the_mean():
    a = IterativeRefiner(LABELS, 40, rounds=2)
    b = IterativeRefiner(LABELS, 40, rounds=2)
    for refiner in (a, b):
        refiner.next_round()
    a.update({1: 1.0, 2: 3.0})
    b.update([2.0, 1.0, 3.0, np.nan])
    np.testing.assert_allclose(a.weights, b.weights)
    expected = np.exp([2.0, 1.0, 3.0, 2.0])
    np.testing.assert_allclose(a.weights, expected / expected.sum())


def test_refiner_state_dict_resumes_identically():
    original = IterativeRefiner(LABELS, 120, rounds=4, seed=11)
    original.next_round()
    original.update([0.3, 0.9, 0.1, 0.5])
    original.next_round()
    state = json.loads(json.dumps(original.state_dict()))
    resumed = IterativeRefiner(LABELS, 120, rounds=4, seed=999)  # seed replaced by the state
    resumed.load_state_dict(state)
    assert resumed.round == original.round == 2
    np.testing.assert_array_equal(resumed.selected, original.selected)
    for loss in ([1.0, 0.2, 0.4, 0.4], [0.5, 0.5, 0.9, 0.1]):
        original.update(loss)
        resumed.update(loss)
        np.testing.assert_array_equal(resumed.next_round(), original.next_round())
        np.testing.assert_array_equal(resumed.weights, original.weights)


def test_refiner_refuses_bad_arguments_and_misuse():
    for kwargs in ({"rounds": 0}, {"tau": 0.0}, {"update": "additive"}):
        with pytest.raises(ConfigError):
            IterativeRefiner(LABELS, 10, **kwargs)
    with pytest.raises(ConfigError, match="budget"):
        IterativeRefiner(LABELS, len(LABELS) + 1)
    refiner = IterativeRefiner(LABELS, 30, rounds=3)
    with pytest.raises(ConfigError, match="next_round"):
        refiner.update([1.0] * 4)  # nothing drawn yet
    refiner.next_round()
    with pytest.raises(ConfigError, match="one entry per cluster"):
        refiner.update([1.0, 2.0])
    refiner.update([1.0] * 4)
    with pytest.raises(ConfigError, match="next_round"):
        refiner.update([1.0] * 4)
    other = IterativeRefiner(LABELS, 31, rounds=3)
    with pytest.raises(ConfigError, match="budget"):
        other.load_state_dict(refiner.state_dict())
