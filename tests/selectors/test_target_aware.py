"""Target-aware selectors: RDS+ (round-robin over target embeddings) and DSIR (n-gram importance
resampling), on hand-checkable planted cases (ALGORITHMS.md 4.5 and 9.2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synthetic import blobs, unit

from gristmill import ingest
from gristmill.errors import ConfigError, InputError
from gristmill.selectors import Pool, select
from gristmill.selectors import rds as rds_module
from gristmill.selectors.sampling import gumbel_top_k
from gristmill.storage.embeddings import EmbeddingStore

MATH = [
    "Solve the equation 3x + 7 = 22 and check that x = 5 satisfies it.",
    "The sum of the integers from 1 to 100 equals 5050, pairing 1 with 100.",
    "Differentiate f(x) = x^2 + 4x; the derivative is 2x + 4 at every point.",
    "A quadratic equation ax^2 + bx + c = 0 has two roots when b^2 - 4ac > 0.",
    "The geometric series sum of 1/2^n for n from 1 to infinity equals 1.",
    "Prove by induction that the sum of the first n odd numbers is n^2.",
    "Integrate 6x from 0 to 2 to get 12, the area under the line.",
    "If 2x - 9 = 15 then x = 12, since adding 9 and dividing by 2 solves the equation.",
    "The matrix equation Ax = b has a unique solution when the determinant of A is nonzero.",
    "Compute the sum 17 + 28 + 39 = 84 and verify it with column addition.",
    "The prime factorization of 360 is 2^3 * 3^2 * 5, so it has 24 divisors.",
    "The Pythagorean equation a^2 + b^2 = c^2 gives a hypotenuse of 5 for legs 3 and 4.",
    "The arithmetic series sum of 2, 5, 8, ..., 29 equals 155 over its 10 terms.",
    "Rearrange the equation y = 3x - 6 to find the x-intercept at x = 2.",
    "The limit of (1 + 1/n)^n as n grows is the number e, about 2.718.",
    "Expand (x + 3)^2 = x^2 + 6x + 9 and compare the coefficients of the equation.",
    "The variance is the sum of squared deviations divided by n - 1 for a sample.",
    "Solve the system x + y = 10 and x - y = 4: adding the equations gives x = 7.",
    "The sum of the angles of a triangle is 180 degrees in Euclidean geometry.",
    "Factor the equation x^2 - 5x + 6 = 0 into (x - 2)(x - 3) = 0.",
]
COOKING = [
    "Whisk two eggs with a splash of milk and pour them into a hot buttered pan.",
    "Simmer the tomato sauce with garlic and basil for twenty minutes, stirring often.",
    "Knead the bread dough until smooth, then let it rise in a warm kitchen for an hour.",
    "Roast the carrots with olive oil, salt and thyme until they caramelise at the edges.",
    "Season the chicken thighs with paprika and lemon before grilling them over charcoal.",
    "Fold the melted chocolate gently into the whipped cream to keep the mousse airy.",
    "Chop the onions finely and fry them slowly in butter until golden and sweet.",
    "Blanch the green beans in salted boiling water, then plunge them into ice water.",
    "Marinate the tofu in soy sauce, ginger and sesame oil overnight in the fridge.",
    "Bake the apple pie until the crust is golden and the filling bubbles through the vents.",
    "Stir the risotto with warm stock one ladle at a time until the rice is creamy.",
    "Sear the steak in a very hot cast iron pan and rest it before slicing.",
    "Toast the cumin seeds in a dry pan until fragrant, then grind them for the curry.",
    "Braise the beef with red wine, onions and mushrooms for three hours in the oven.",
    "Rub cold butter into the flour with your fingertips to make a crumbly pastry.",
    "Steam the rice with a pinch of salt and let it rest covered for ten minutes.",
    "Grate fresh parmesan over the pasta and finish it with black pepper and basil.",
    "Poach the pears in spiced syrup with cinnamon and cloves until tender.",
    "Puree the roasted pumpkin with stock and cream for a smooth autumn soup.",
    "Slice the cucumbers thinly and pickle them in vinegar, sugar and dill.",
]
MATH_TARGET = [
    "Solve the equation 5x - 3 = 12 to find x = 3.",
    "The sum of the series 1 + 2 + 4 + 8 equals 15.",
    "Find the roots of the quadratic equation x^2 - 9 = 0.",
    "Compute the sum of the integers from 1 to 20, which is 210.",
    "The derivative of x^3 is 3x^2, and the integral of 2x is x^2.",
    "Solve for x in the equation 4x + 1 = 17, so x = 4.",
    "The sum of two even integers is always an even integer.",
    "Use the quadratic formula to solve the equation x^2 + 2x - 8 = 0.",
    "The series sum of the first n squares is n(n + 1)(2n + 1)/6.",
    "Prove that the equation has no integer solution by checking it modulo 4.",
    "The derivative of the sum is the sum of the derivatives of each term.",
    "Compute the determinant of the 2 by 2 matrix with rows 1 2 and 3 4, which is -2.",
    "The integral of the function from 0 to 1 gives the area, which equals 1/3.",
    "Find the value of x that makes both sides of the equation equal.",
    "The triangle has angles of 30, 60 and 90 degrees, and the sides follow the ratio.",
]


def _angles(degrees: list[float]) -> np.ndarray:
    radians = np.deg2rad(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


# Two queries, at 0 and 60 degrees, over seven 2-D unit rows (position: angle).
QUERIES = _angles([0, 60])
POOL_DEGREES = [0, 57, 5, 130, 35, -90, 64]


@pytest.mark.parametrize(("budget", "expected", "picks"), [
    (1, [0], [1, 0]),
    (2, [0, 1], [1, 1]),
    (3, [0, 1, 2], [2, 1]),
    (4, [0, 1, 2, 6], [2, 2]),
    (5, [0, 1, 2, 4, 6], [3, 2]),
    (6, [0, 1, 2, 3, 4, 6], [3, 3]),
])
def test_rds_round_robin_known_answer(budget: int, expected: list[int], picks: list[int]) -> None:
    # q0 ranks 0, 5, 35, 57, 64 deg; q1 ranks 57, 64, 35, 5, 0, 130 deg. Turns: q0 -> 0,
    # q1 -> 57, q0 -> 5, q1 -> 64, q0 -> 35 (though q1 is closer to it), q1 -> 130.
    pool = Pool.from_arrays(_angles(POOL_DEGREES))
    result = select("rds", pool, budget, target=QUERIES)
    np.testing.assert_array_equal(result.selected, expected)
    assert result.stats["picks_per_target"] == picks and result.reason == "off_target"
    if budget >= 5:  # a kept row scores the cosine of the query that picked it
        assert result.scores[4] == pytest.approx(np.cos(np.deg2rad(35)), abs=1e-6)
    if budget == 6:
        assert result.scores[3] == pytest.approx(np.cos(np.deg2rad(70)), abs=1e-6)
    # A dropped row scores its max cosine over the queries: -90 deg is 150 from q1, 90 from q0.
    assert result.scores[5] == pytest.approx(0.0, abs=1e-6)


def test_rds_disjoint_targets_share_the_budget_evenly(clustered_pool: Pool) -> None:
    # Blob centres as queries: each query's top list stays inside its own blob (4.5 item 3).
    queries = unit(clustered_pool.centroids)
    for budget in (10, 13, 40):
        result = select("rds", clustered_pool, budget, target=queries)
        picks = result.stats["picks_per_target"]
        assert sum(picks) == budget
        assert set(picks) <= {budget // 4, -(-budget // 4)}
        counts = np.bincount(clustered_pool.labels[result.selected], minlength=4)
        np.testing.assert_array_equal(np.sort(counts), np.sort(picks))


@pytest.mark.parametrize("block_entries", [rds_module.BLOCK_ENTRIES, 1, 2])
def test_rds_ties_go_to_the_lower_position(monkeypatch: pytest.MonkeyPatch,
                                           block_entries: int) -> None:
    # Rows 1, 2, 4, 5 are the same vector; the queries are that vector. Small blocks stream the
    # pool 1 or 2 rows at a time, so ties meet across chunk merges too.
    monkeypatch.setattr(rds_module, "BLOCK_ENTRIES", block_entries)
    vectors = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [1.0, 0.0], [1.0, 0.0]])
    pool = Pool.from_arrays(vectors)
    for budget, expected in [(1, [1]), (2, [1, 2]), (3, [1, 2, 4]), (5, [1, 2, 3, 4, 5])]:
        result = select("rds", pool, budget, target=np.array([[1.0, 0.0]]))
        np.testing.assert_array_equal(result.selected, expected)
    result = select("rds", pool, 3, target=np.array([[1.0, 0.0], [2.0, 0.0]]))
    np.testing.assert_array_equal(result.selected, [1, 2, 4])


def _naive_rds(vectors: np.ndarray, queries: np.ndarray, budget: int) -> list[int]:
    """Algorithm 1 written out: full sorted lists, queries take turns (ALGORITHMS.md 4.2)."""
    sims = unit(queries) @ unit(vectors).T
    lists = [sorted(range(len(vectors)), key=lambda i, s=s: (-s[i], i)) for s in sims]
    chosen: list[int] = []
    while len(chosen) < budget:
        for ranked in lists:
            if len(chosen) < budget:
                chosen.append(next(i for i in ranked if i not in chosen))
    return sorted(chosen)


def test_rds_matches_the_naive_algorithm(monkeypatch: pytest.MonkeyPatch) -> None:
    # 40 rows drawn from 10 well-separated directions (many exact ties), 3 queries.
    rng = np.random.default_rng(5)
    directions = unit(rng.normal(size=(10, 6)))
    vectors = directions[rng.integers(0, 10, size=40)]
    queries = rng.normal(size=(3, 6))
    pool = Pool.from_arrays(vectors)
    monkeypatch.setattr(rds_module, "BLOCK_ENTRIES", 21)  # 7 pool rows per block
    for budget in range(1, 41):
        result = select("rds", pool, budget, target=queries)
        assert result.selected.tolist() == _naive_rds(vectors, queries, budget), budget


def test_rds_small_blocks_and_requery_match(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ten identical queries share one top list of k = ceil(3 * 20 / 10) = 6 rows, so lists run
    # out and are re-queried; the result is then the 20 rows nearest to that one query.
    vectors, _ = blobs([60], dim=8, spread=[1.0], seed=4)
    pool = Pool.from_arrays(vectors)
    queries = np.repeat(unit(np.ones((1, 8))), 10, axis=0)
    result = select("rds", pool, 20, target=queries)
    nearest = np.argsort(-(vectors @ queries[0]), kind="stable")[:20]
    np.testing.assert_array_equal(result.selected, np.sort(nearest))
    assert result.stats["requeries"] > 0 and len(set(result.selected.tolist())) == 20
    # Streaming one or two pool rows at a time merges top lists to the same answer.
    monkeypatch.setattr(rds_module, "BLOCK_ENTRIES", 16)
    again = select("rds", pool, 20, target=queries)
    np.testing.assert_array_equal(again.selected, result.selected)
    np.testing.assert_allclose(again.scores, result.scores, atol=1e-6)  # BLAS block sums


def test_rds_finds_rows_planted_near_the_targets() -> None:
    rng = np.random.default_rng(7)
    background = unit(rng.normal(size=(300, 32)))
    targets = unit(rng.normal(size=(5, 32)))
    planted = unit(targets + 0.05 * rng.normal(size=targets.shape))
    where = np.array([13, 77, 150, 222, 299])
    background[where] = planted
    result = select("rds", Pool.from_arrays(background), 5, target=targets, seed=1)
    np.testing.assert_array_equal(result.selected, where)
    assert result.stats["picks_per_target"] == [1, 1, 1, 1, 1]


def test_rds_target_from_npy_file(tmp_path: Path, clustered_pool: Pool) -> None:
    queries = clustered_pool.centroids[:2] * 3.0  # not unit: rds normalises
    np.save(tmp_path / "target.npy", queries)
    from_file = select("rds", clustered_pool, 12, target=str(tmp_path / "target.npy"))
    from_array = select("rds", clustered_pool, 12, target=queries)
    np.testing.assert_array_equal(from_file.selected, from_array.selected)
    assert from_file.params["target"].endswith("target.npy")


def _write_embedding_store(root: Path, vectors: np.ndarray, model: str) -> Path:
    """A one-shard embedding store written by hand (the layout `gristmill embed` writes)."""
    root.mkdir()
    array = vectors.astype(np.float16)
    np.save(root / "part-0.npy", array)
    shard = {"path": "part-0.npy", "corpus_shard": "part-0.parquet", "rows": len(array),
             "bytes": (root / "part-0.npy").stat().st_size, "sha256": "unused"}
    manifest = {"kind": "embeddings", "format_version": 1, "dim": array.shape[1],
                "rows": len(array), "model": model, "normalized": True, "shards": [shard]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_rds_target_from_embedding_store(tmp_path: Path, clustered_pool: Pool) -> None:
    queries = unit(clustered_pool.centroids[:3])
    with_gaps = np.full((5, clustered_pool.dim), np.nan)
    with_gaps[[0, 2, 4]] = queries  # rows 1 and 3 were outside `embed --selection`
    store = _write_embedding_store(tmp_path / "target-emb", with_gaps, "model-a")
    from_store = select("rds", clustered_pool, 9, target=store)
    from_array = select("rds", clustered_pool, 9, target=queries.astype(np.float16))
    np.testing.assert_array_equal(from_store.selected, from_array.selected)
    assert from_store.stats["num_targets"] == 3
    clustered_pool.embeddings = EmbeddingStore.open(
        _write_embedding_store(tmp_path / "pool-emb", queries, "model-b"))
    with pytest.raises(InputError, match="not comparable"):
        select("rds", clustered_pool, 9, target=store)


def test_rds_bad_targets(clustered_pool: Pool) -> None:
    dim = clustered_pool.dim
    with pytest.raises(InputError, match=f"different dimension.*{dim + 1}-d.*{dim}-d"):
        select("rds", clustered_pool, 5, target=np.ones((3, dim + 1)))
    broken = np.ones((4, dim))
    broken[[1, 3], 0] = [np.nan, np.inf]
    with pytest.raises(InputError, match=r"target rows \[1, 3\]"):
        select("rds", clustered_pool, 5, target=broken)
    with pytest.raises(InputError, match="at least one"):
        select("rds", clustered_pool, 5, target=np.empty((0, dim)))
    with pytest.raises(InputError, match="neither"):
        select("rds", clustered_pool, 5, target="no/such/target.txt")
    with pytest.raises(ConfigError, match="needs `target`"):
        select("rds", clustered_pool, 5)


def test_rds_conformance(check_selector, clustered_pool: Pool) -> None:
    check_selector("rds", clustered_pool, 17, target=clustered_pool.centroids[:3])


#: 40 pool texts: math at even positions, cooking at odd ones.
POOL_TEXTS = [text for pair in zip(MATH, COOKING, strict=True) for text in pair]


def _text_pool() -> Pool:
    vectors, _ = blobs([len(POOL_TEXTS)], dim=4, seed=2)
    return Pool.from_arrays(vectors, texts=POOL_TEXTS)


@pytest.mark.parametrize("seed", [0, 1, 11])
def test_dsir_target_equal_to_pool_is_uniform(seed: int) -> None:
    pool = _text_pool()
    result = select("dsir", pool, 15, seed=seed, target=POOL_TEXTS)
    assert np.all(result.scores == 0.0)  # log p - log q is exactly 0 for equal counts
    uniform = np.sort(gumbel_top_k(np.zeros(pool.size), 15, np.random.default_rng(seed)))
    np.testing.assert_array_equal(result.selected, uniform)


def test_dsir_target_equal_to_pool_matches_random_selector() -> None:
    pool = _text_pool()
    for seed in (0, 5):
        dsir = select("dsir", pool, 12, seed=seed, target=POOL_TEXTS)
        random = select("random", pool, 12, seed=seed)
        np.testing.assert_array_equal(dsir.selected, random.selected)


def test_dsir_prefers_documents_like_the_target() -> None:
    pool = _text_pool()
    for seed in range(5):
        result = select("dsir", pool, 20, seed=seed, target=MATH_TARGET)
        math_share = np.mean(result.selected % 2 == 0)
        assert math_share >= 0.9  # observed 0.95, 1, 1, 1, 1 (min 0.95 over 50 seeds)
        assert result.stats["kl_reduction"] >= 0  # observed 0.017 nats (0.030 -> 0.013)
        assert result.reason == "off_target"
    assert result.scores[::2].mean() > result.scores[1::2].mean()


def test_dsir_target_from_jsonl_and_corpus_store(tmp_path: Path) -> None:
    pool = _text_pool()
    expected = select("dsir", pool, 10, seed=4, target=MATH_TARGET)
    jsonl = tmp_path / "target.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in MATH_TARGET))
    np.testing.assert_array_equal(
        select("dsir", pool, 10, seed=4, target=jsonl).selected, expected.selected)
    source = tmp_path / "target.parquet"
    pq.write_table(pa.Table.from_pylist(
        [{"id": f"math-{i}", "text": t} for i, t in enumerate(MATH_TARGET)]), source)
    store = ingest([source], tmp_path / "target-corpus", domain="math", id_field="id",
                   progress=False)
    from_store = select("dsir", pool, 10, seed=4, target=str(store.path))
    np.testing.assert_array_equal(from_store.selected, expected.selected)
    assert from_store.stats["target_docs"] == len(MATH_TARGET)


def test_dsir_bad_input() -> None:
    pool = _text_pool()
    with pytest.raises(InputError, match="no texts"):
        select("dsir", pool, 5, target=[])
    with pytest.raises(InputError, match="no words"):
        select("dsir", pool, 5, target=["", "1 + 2"])
    with pytest.raises(ConfigError, match="num_buckets"):
        select("dsir", pool, 5, target=MATH_TARGET, num_buckets=1)
    with pytest.raises(ConfigError, match="ngram"):
        select("dsir", pool, 5, target=MATH_TARGET, ngram=0)
    with pytest.raises(ConfigError, match="reads texts"):
        select("dsir", Pool.from_arrays(np.eye(3)), 1, target=MATH_TARGET)


def test_dsir_conformance(check_selector) -> None:
    check_selector("dsir", _text_pool(), 13, target=MATH_TARGET)
