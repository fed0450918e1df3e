"""Packing fixtures: the `check_packer` conformance helper every packer must pass (STYLE.md 17)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from gristmill.packing import PackPlan


def _check_packer(plan: PackPlan, lengths: np.ndarray, seq_len: int) -> None:
    """No row over capacity, every token exactly once, order a permutation, CSR well formed."""
    lengths = np.asarray(lengths, dtype=np.int64)
    segs = plan.segments
    assert plan.seq_len == seq_len
    assert plan.row_offsets[0] == 0 and plan.row_offsets[-1] == len(segs)
    assert np.all(np.diff(plan.row_offsets) >= 1), "empty or non-monotone row"
    assert np.array_equal(np.sort(plan.order), np.arange(len(segs))), "order not a permutation"
    assert np.all(segs.length >= 1)
    assert np.all(plan.row_lengths() <= seq_len), "row over capacity"
    assert np.all(segs.length <= seq_len)
    # Every document is tiled by its segments: contiguous, in order, no overlap, no gap.
    by_doc = np.lexsort((segs.start, segs.doc))
    doc, start, end = segs.doc[by_doc], segs.start[by_doc], segs.end[by_doc]
    assert np.array_equal(np.unique(doc), np.arange(lengths.size)), "a document is missing"
    first = np.r_[True, doc[1:] != doc[:-1]]
    assert np.all(start[first] == 0)
    assert np.all(start[~first] == end[np.flatnonzero(~first) - 1]), "gap or overlap"
    last = np.r_[doc[1:] != doc[:-1], True]
    assert np.array_equal(end[last], lengths), "document not covered to its end"
    assert plan.tokens == lengths.sum()
    assert plan.efficiency == pytest.approx(lengths.sum() / (plan.num_rows * seq_len))
    assert plan.num_rows >= -(-lengths.sum() // seq_len)
    assert plan.describe()["rows"] == plan.num_rows


@pytest.fixture(scope="session")
def check_packer() -> Callable[[PackPlan, np.ndarray, int], None]:
    """`check_packer(plan, lengths, seq_len)` asserts the packer contract."""
    return _check_packer
