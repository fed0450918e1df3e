"""Stage 4: tokenization, packing documents into fixed-length rows, length buckets, varlen rows.

`train_tokenizer` / `tokenize_store` (tokenize.py) turn a corpus store, or a selection of it,
into a token store; the training stream (`gristmill.samplers`) packs from there.

`pack(name, lengths, seq_len)` runs a registered packer on per-document token counts and
returns a `PackPlan` (CSR: `order`, `row_offsets`, over the plan's `segments`). No packer drops
or truncates tokens: a document longer than the row is split into consecutive segments first.
Packing efficiency = real tokens / (rows * seq_len) is `plan.efficiency` and in
`plan.describe()`. `build_rows` turns plan rows into input_ids / labels / position_ids /
cu_seqlens. Models that cannot use packed rows batch by length instead (`buckets`).

Registered packers (ALGORITHMS.md section 7):

- `bfd`: best-fit decreasing, O(n log n); the default, at the lower bound in practice.
- `ffd`: first-fit decreasing with a max segment tree over rows.
- `wrapped`: concatenate in input order and cut every seq_len tokens (Megatron baseline).

Data flows one way, storage -> embed -> selectors -> packing -> samplers, and no stage imports a
later one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gristmill.errors import ConfigError
from gristmill.packing import bfd, ffd, wrapped
from gristmill.packing.buckets import (
    assign_buckets,
    bucket_boundaries,
    geometric_boundaries,
    padding_efficiency,
    token_budget_batches,
)
from gristmill.packing.plan import PackPlan
from gristmill.packing.rows import IGNORE_INDEX, build_rows
from gristmill.packing.segments import Segments, check_seq_len, split_segments
from gristmill.packing.tokenize import (
    TokenizeResult,
    load_tokenizer_spec,
    tokenize_store,
    train_tokenizer,
)

#: Packer name -> function(lengths, seq_len) -> PackPlan. Adding a packer: one module, one line.
PACKERS: dict[str, Callable[[np.ndarray, int], PackPlan]] = {
    "bfd": bfd.pack,
    "ffd": ffd.pack,
    "wrapped": wrapped.pack,
}

__all__ = [
    "IGNORE_INDEX", "PACKERS", "PackPlan", "Segments", "assign_buckets", "bucket_boundaries",
    "build_rows", "geometric_boundaries", "pack", "padding_efficiency", "split_segments",
    "token_budget_batches", "TokenizeResult", "load_tokenizer_spec", "tokenize_store",
    "train_tokenizer",
]


def pack(name: str, lengths: np.ndarray, seq_len: int) -> PackPlan:
    """Pack documents of the given token counts into rows of `seq_len` tokens.

    Args:
        name: a key of PACKERS ("bfd", "ffd", "wrapped").
        lengths: (n,) integer tokens per document, each >= 1.
        seq_len: tokens per row, >= 2.

    Returns:
        PackPlan; `plan.efficiency` is real tokens / (rows * seq_len).

    Example:
        >>> plan = pack("bfd", np.array([5, 4, 3, 3, 1]), 8)
        >>> plan.num_rows, plan.efficiency
        (2, 1.0)
    """
    if name not in PACKERS:
        raise ConfigError(f"unknown packer {name!r}; choose one of {sorted(PACKERS)}")
    return PACKERS[name](lengths, check_seq_len(seq_len))
