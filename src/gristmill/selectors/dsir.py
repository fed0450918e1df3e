"""DSIR: resample the pool toward a target text set by hashed n-gram importance weights.

Use it to make a large raw pool look like a small target corpus (e.g. Wikipedia + books, or a
domain's documents) without embeddings. Method: Xie, Santurkar, Ma, Liang, "Data Selection for
Language Models via Importance Resampling" (NeurIPS 2023; ALGORITHMS.md 9.2): featurise every
document as hashed unigram + bigram counts, fit bag-of-n-gram multinomials p (target) and q
(pool), weight document i by w_i = p(z_i) / q(z_i), and draw the budget without replacement in
proportion to w by Gumbel-top-k.

Why DSIR rather than GOT-D (ALGORITHMS.md 9.1) as gristmill's second target-aware selector:
it runs on CPUs only and needs no embeddings, so it complements RDS+ (which ranks by embedding
cosine); the paper selects 100M documents from the full Pile in 4.5 hours; given the seed it is
deterministic; and it needs no optimal-transport (Sinkhorn) solver dependency.

The pool is streamed twice (counts q, then log-weights) and once more over the selected rows
for the KL statistic; the sparse features are kept between passes while they are small.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer

from gristmill.errors import ConfigError, InputError
from gristmill.selectors.pool import Pool
from gristmill.selectors.result import SelectionResult
from gristmill.selectors.sampling import gumbel_top_k
from gristmill.storage.corpus import CorpusStore

#: Sparse feature entries kept in memory between passes (~12 bytes each); above it the pool's
#: texts are featurised again on every pass.
CACHE_NNZ = 20_000_000
#: Target texts featurised at a time.
TARGET_BATCH = 10_000

Target = Sequence[str] | str | Path
Batches = list[tuple[np.ndarray, Any]]


def select(pool: Pool, budget: int, *, seed: int, target: Target | None = None,
           num_buckets: int = 10_000, ngram: int = 2) -> SelectionResult:
    """Draw `budget` pool rows with probability proportional to their DSIR importance weight.

    Args:
        pool: the rows to choose from; it must carry texts (a corpus, or `texts=`).
        budget: rows to keep, 0 <= budget <= pool.size.
        seed: seeds the Gumbel noise; with target == pool the draw equals `random`'s.
        target: the target texts: a list of strings, a corpus store directory, or a `.jsonl`
            file with a "text" field per line.
        num_buckets: hash buckets of the n-gram features (the paper's 10,000).
        ngram: longest n-gram counted (2: unigrams and bigrams, as in the paper).

    Returns:
        The selection; `scores` (n,) float32 holds each row's log importance weight.
    """
    _check_options(num_buckets, ngram, target, pool)
    vectorizer = HashingVectorizer(n_features=num_buckets, ngram_range=(1, ngram),
                                   alternate_sign=False, norm=None, lowercase=True)
    target_counts, target_docs = _target_counts(target, vectorizer)
    pool_counts, cache = _pool_counts(pool, vectorizer)
    # Identical count vectors give exactly 0 here, so target == pool reduces to uniform sampling.
    log_ratio = _log_dist(target_counts) - _log_dist(pool_counts)
    log_weights = np.empty(pool.size, dtype=np.float64)
    for positions, features in _features(pool, vectorizer, cache):
        log_weights[positions] = features @ log_ratio
    selected = np.sort(gumbel_top_k(log_weights, budget, np.random.default_rng(seed)))
    if budget >= pool.size:
        selected_counts = pool_counts
    else:
        selected_counts = _selected_counts(pool, vectorizer, cache, selected)
    stats = {**_kl_stats(target_counts, pool_counts, selected_counts),
             "num_buckets": num_buckets, "ngram": ngram, "target_docs": target_docs}
    params = {"target": _describe(target), "num_buckets": num_buckets, "ngram": ngram}
    return SelectionResult(selected, log_weights.astype(np.float32), "off_target",
                           stats=stats, params=params)


def _check_options(num_buckets: int, ngram: int, target: Target | None, pool: Pool) -> None:
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, int) or num_buckets < 2:
        raise ConfigError(f"`num_buckets` must be an integer >= 2, got {num_buckets!r}; the "
                          "paper uses 10000")
    if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 1:
        raise ConfigError(f"`ngram` must be an integer >= 1, got {ngram!r}; use 2 for "
                          "unigrams + bigrams")
    if target is None:
        raise ConfigError("dsir needs `target`: pass --target with a corpus store or a .jsonl "
                          "file of target texts")
    if not pool.has_texts:
        raise ConfigError("dsir reads texts: build the pool from a corpus store (load_pool) "
                          "or pass texts= to Pool.from_arrays")


def _log_dist(counts: np.ndarray) -> np.ndarray:
    """Log of the add-one (Laplace) smoothed distribution (c_t + 1) / (sum c + B)."""
    return np.log(counts + 1.0) - np.log(counts.sum() + len(counts))


def _column_sums(features: Any) -> np.ndarray:
    return np.asarray(features.sum(axis=0), dtype=np.float64).ravel()


def _target_counts(target: Target, vectorizer: HashingVectorizer) -> tuple[np.ndarray, int]:
    """Bucket counts (B,) float64 summed over the target texts, and the number of texts."""
    counts = np.zeros(vectorizer.n_features, dtype=np.float64)
    docs = 0
    for texts in _target_texts(target):
        counts += _column_sums(vectorizer.transform(texts))
        docs += len(texts)
    if docs == 0:
        raise InputError(f"target {_describe(target)} holds no texts; pass at least one "
                         "target document")
    if counts.sum() == 0:
        raise InputError(f"target {_describe(target)}: its {docs} texts hold no words "
                         "(tokens of 2+ word characters); pass real target documents")
    return counts, docs


def _target_texts(target: Target) -> Iterator[list[str]]:
    """The target texts, TARGET_BATCH at a time."""
    if not isinstance(target, str | Path):
        yield from _checked_list(target)
        return
    path = Path(target)
    if path.is_dir():
        for _, _, table in CorpusStore.open(path).iter_batches(["text"]):
            yield [text or "" for text in table.column("text").to_pylist()]
    elif path.suffix == ".jsonl" and path.is_file():
        yield from _jsonl_texts(path)
    else:
        raise InputError(f"target {str(path)!r} is neither a corpus store directory nor a "
                         ".jsonl file; pass one of those, or a list of texts")


def _checked_list(texts: Sequence[str]) -> Iterator[list[str]]:
    texts = list(texts)
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
    if bad:
        raise InputError(f"target texts must be strings; items {bad[:5]} are not (first is "
                         f"{type(texts[bad[0]]).__name__})")
    for start in range(0, len(texts), TARGET_BATCH):
        yield texts[start:start + TARGET_BATCH]


def _jsonl_texts(path: Path) -> Iterator[list[str]]:
    batch: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: not valid JSON ({exc}); fix the line") from exc
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise InputError(f"{path}:{number}: needs a string \"text\" field")
            batch.append(record["text"])
            if len(batch) == TARGET_BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _pool_counts(pool: Pool, vectorizer: HashingVectorizer) -> tuple[np.ndarray, Batches | None]:
    """Pass 1: bucket counts (B,) float64 over the pool, and the features if they fit."""
    counts = np.zeros(vectorizer.n_features, dtype=np.float64)
    cache: Batches | None = []
    kept = 0
    for positions, features in _features(pool, vectorizer, None):
        counts += _column_sums(features)
        kept += features.nnz
        if cache is not None and kept <= CACHE_NNZ:
            cache.append((positions, features))
        else:
            cache = None
    return counts, cache


def _features(pool: Pool, vectorizer: HashingVectorizer, cache: Batches | None
              ) -> Iterator[tuple[np.ndarray, Any]]:
    """Yield `(pool positions, (rows, B) sparse counts)` from the cache or the texts."""
    if cache is not None:
        yield from cache
        return
    for positions, texts in pool.iter_texts():
        yield positions, vectorizer.transform(texts)


def _selected_counts(pool: Pool, vectorizer: HashingVectorizer, cache: Batches | None,
                     selected: np.ndarray) -> np.ndarray:
    """Bucket counts (B,) float64 over the selected rows only."""
    is_selected = np.zeros(pool.size, dtype=bool)
    is_selected[selected] = True
    counts = np.zeros(vectorizer.n_features, dtype=np.float64)
    for positions, features in _features(pool, vectorizer, cache):
        counts += _column_sums(features[is_selected[positions]])
    return counts


def _kl_stats(target: np.ndarray, pool: np.ndarray, selected: np.ndarray) -> dict[str, float]:
    """KL reduction (ALGORITHMS.md 9.2): KL(target || pool) - KL(target || selected), over the
    smoothed bucket distributions; the pool distribution stands for a uniform random sample."""
    log_target = _log_dist(target)
    p = np.exp(log_target)
    kl_pool = float(np.sum(p * (log_target - _log_dist(pool))))
    kl_selected = float(np.sum(p * (log_target - _log_dist(selected))))
    return {"kl_target_pool": kl_pool, "kl_target_selected": kl_selected,
            "kl_reduction": kl_pool - kl_selected}


def _describe(target: Target) -> str:
    if isinstance(target, str | Path):
        return str(target)
    return f"{len(target)} texts"
