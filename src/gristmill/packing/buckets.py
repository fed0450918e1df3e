"""Length buckets and token-budget batches, for models that cannot use packed rows (7.5).

Bucketing is the alternative to packing when varlen attention is unavailable, and for eval or
generation: documents of similar length are batched together and padded to the batch's
longest, and each batch holds about `max_tokens` padded tokens (Tensor2Tensor's bucket batch
size = token_budget // bucket_max).

Boundaries are inclusive upper bounds: bucket k holds lengths in (boundaries[k-1],
boundaries[k]]; lengths above the last boundary go to an overflow bucket len(boundaries).
"""

from __future__ import annotations

import logging

import numpy as np

from gristmill.errors import ConfigError
from gristmill.packing.segments import check_lengths

log = logging.getLogger(__name__)


def geometric_boundaries(max_length: int, *, start: int = 8, ratio: float = 1.1) -> np.ndarray:
    """Tensor2Tensor boundaries: b_{k+1} = max(b_k + 1, floor(ratio * b_k)), below `max_length`.

    Returns:
        (b,) int64 increasing; 63 boundaries for max_length 2048 (ALGORITHMS.md 7.5).
    """
    if start < 1 or ratio <= 1.0:
        raise ConfigError(f"need `start` >= 1 and `ratio` > 1, got {start}, {ratio}")
    out, b = [], start
    while b < max_length:
        out.append(b)
        b = max(b + 1, int(b * ratio))
    return np.asarray(out, dtype=np.int64)


def bucket_boundaries(lengths: np.ndarray, num_buckets: int) -> np.ndarray:
    """Automatic boundaries at the length quantiles k / num_buckets, k = 1..num_buckets.

    Args:
        lengths: (n,) integer tokens per document, each >= 1.
        num_buckets: wanted buckets, >= 1; ties in the lengths can leave fewer.

    Returns:
        (b,) int64 sorted unique boundaries, b <= num_buckets, the last == max(lengths).
    """
    lengths = check_lengths(lengths)
    if num_buckets < 1:
        raise ConfigError(f"`num_buckets` must be >= 1, got {num_buckets}")
    if not lengths.size:
        return np.zeros(0, dtype=np.int64)
    qs = np.arange(1, num_buckets + 1) / num_buckets
    return np.unique(np.quantile(lengths, qs, method="higher").astype(np.int64))


def assign_buckets(lengths: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """(n,) int64 bucket of each length: first k with lengths <= boundaries[k]."""
    boundaries = np.asarray(boundaries, dtype=np.int64)
    if boundaries.ndim != 1 or np.any(np.diff(boundaries) <= 0):
        raise ConfigError(f"`boundaries` must be strictly increasing, got {boundaries.tolist()}")
    return np.searchsorted(boundaries, np.asarray(lengths, dtype=np.int64), side="left")


def token_budget_batches(lengths: np.ndarray, max_tokens: int, *,
                         boundaries: np.ndarray | None = None) -> list[np.ndarray]:
    """Group documents into batches whose padded size (rows * longest) is <= `max_tokens`.

    Within each bucket (one bucket if `boundaries` is None) documents go longest first (ties by
    index) and each batch takes as many as fit under the budget at its first (longest) length.
    A document longer than `max_tokens` gets a batch of its own and a warning in the log.

    Args:
        lengths: (n,) integer tokens per document, each >= 1.
        max_tokens: padded-token budget per batch, >= 1.
        boundaries: optional bucket boundaries (`bucket_boundaries`, `geometric_boundaries`).

    Returns:
        list of (k,) int64 document indices, buckets in increasing order; every document once.
    """
    lengths = check_lengths(lengths)
    if max_tokens < 1:
        raise ConfigError(f"`max_tokens` must be >= 1, got {max_tokens}")
    bucket = (np.zeros(lengths.size, np.int64) if boundaries is None
              else assign_buckets(lengths, boundaries))
    order = np.lexsort((np.arange(lengths.size), -lengths, bucket))
    sorted_bucket = bucket[order]
    bucket_end = np.searchsorted(sorted_bucket, sorted_bucket, side="right").tolist()
    sorted_lengths = lengths[order].tolist()
    batches: list[np.ndarray] = []
    i = 0
    while i < order.size:
        stop = min(i + max(1, max_tokens // sorted_lengths[i]), bucket_end[i])
        batches.append(order[i:stop])
        i = stop
    overlong = np.flatnonzero(lengths > max_tokens)
    if overlong.size:
        log.warning("%d documents exceed max_tokens=%d and are batched alone (first: %d)",
                    overlong.size, max_tokens, int(overlong[0]))
    return batches


def padding_efficiency(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Real tokens / padded tokens (sum of rows * longest) over `batches`; 0.0 if empty."""
    lengths = np.asarray(lengths, dtype=np.int64)
    padded = sum(int(b.size * lengths[b].max()) for b in batches if b.size)
    real = sum(int(lengths[b].sum()) for b in batches)
    return real / padded if padded else 0.0
