"""build_rows (labels, restarting positions, cu_seqlens) and length buckets / token budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gristmill.errors import ConfigError, InputError
from gristmill.packing import (
    IGNORE_INDEX,
    PACKERS,
    assign_buckets,
    bucket_boundaries,
    build_rows,
    geometric_boundaries,
    pack,
    padding_efficiency,
    token_budget_batches,
)

PAD = 99_999


def token_store(lengths):
    """Flat uint32 tokens where document i's token j is i * 1000 + j: self-describing ids."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.concatenate([i * 1000 + np.arange(n) for i, n in enumerate(lengths)])
    return tokens.astype(np.uint32), offsets


def check_rows(out, plan, tokens, offsets, rows):
    seq_len = plan.seq_len
    ids, labels, pos, docs = (out[k] for k in ("input_ids", "labels", "position_ids", "doc_ids"))
    assert ids.shape == (rows.size, seq_len) and ids.dtype == np.int64
    real = docs >= 0
    assert np.array_equal(labels[~real], np.full((~real).sum(), IGNORE_INDEX))
    assert np.all(labels[pos == 0] == IGNORE_INDEX)
    assert np.array_equal(labels[real & (pos > 0)], ids[real & (pos > 0)])
    assert np.all(ids[~real] == PAD)
    cu = out["cu_seqlens"]
    assert cu.dtype == np.int32 and cu[0] == 0 and cu[-1] == rows.size * seq_len
    assert np.all(np.diff(cu) > 0) and out["max_seqlen"] == np.diff(cu).max()
    # position_ids is the concatenation of arange(len) over the cu_seqlens sequences.
    flat_pos = np.concatenate([np.arange(n) for n in np.diff(cu)])
    assert np.array_equal(pos.reshape(-1), flat_pos)
    for seg in out["segments"]:
        row, lo = seg["row"], seg["offset"]
        hi = lo + seg["end"] - seg["start"]
        doc_start = offsets[seg["doc"]]
        source = tokens[doc_start + seg["start"]:doc_start + seg["end"]]
        assert np.array_equal(ids[row, lo:hi], source)
        assert np.all(docs[row, lo:hi] == seg["doc"])
        assert lo in (cu - row * seq_len).tolist()  # every segment starts a varlen sequence
    assert real.sum() == plan.row_lengths()[rows].sum()


@pytest.mark.parametrize("name", sorted(PACKERS))
@settings(max_examples=30, deadline=None)
@given(seq_len=st.integers(2, 64), data=st.data())
def test_build_rows_properties(name, seq_len, data):
    lengths = np.array(data.draw(st.lists(st.integers(1, 3 * seq_len), min_size=1,
                                          max_size=40)))
    plan = pack(name, lengths, seq_len)
    tokens, offsets = token_store(lengths)
    rows = np.array(data.draw(st.lists(st.integers(0, plan.num_rows - 1), min_size=1,
                                       max_size=6)))
    out = build_rows(plan, tokens, offsets, pad_id=PAD, rows=rows)
    check_rows(out, plan, tokens, offsets, rows)


def test_build_rows_known_answer():
    lengths = np.array([5, 4, 3, 3, 1])
    plan = pack("bfd", lengths, 8)  # rows [doc0, doc2], [doc1, doc3, doc4]
    tokens, offsets = token_store(lengths)
    out = build_rows(plan, tokens, offsets, pad_id=PAD, return_tensors="pt")
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 1, 2, 0]]
    assert out["cu_seqlens"].tolist() == [0, 5, 8, 12, 15, 16]
    assert out["cu_seqlens"].dtype == torch.int32 and out["max_seqlen"] == 5
    assert out["labels"][0].tolist() == [-100, 1, 2, 3, 4, -100, 2001, 2002]
    padded = build_rows(pack("bfd", np.array([3]), 5), *token_store([3]), pad_id=PAD)
    assert padded["position_ids"].tolist() == [[0, 1, 2, 0, 1]]  # the tail restarts at 0
    assert padded["cu_seqlens"].tolist() == [0, 3, 5]
    assert padded["labels"].tolist() == [[-100, 1, 2, -100, -100]]
    assert padded["doc_ids"].tolist() == [[0, 0, 0, -1, -1]]


def test_build_rows_refuses_a_mismatched_store():
    plan = pack("bfd", np.array([5, 4]), 8)
    tokens, offsets = token_store([5, 3])
    with pytest.raises(InputError, match="document 1 is shorter"):
        build_rows(plan, tokens, offsets, pad_id=0)
    with pytest.raises(ConfigError, match=r"`rows` must be in \[0, 2\)"):
        build_rows(plan, *token_store([5, 4]), pad_id=0, rows=np.array([2]))


def test_quantile_boundaries_and_assignment():
    lengths = np.arange(1, 101)
    bounds = bucket_boundaries(lengths, 4)
    assert bounds.tolist() == [26, 51, 76, 100]
    bucket = assign_buckets(lengths, bounds)
    assert np.bincount(bucket).tolist() == [26, 25, 25, 24]
    assert bucket_boundaries(np.full(10, 7), 5).tolist() == [7]  # ties collapse buckets
    assert assign_buckets(np.array([3, 500]), np.array([8, 16])).tolist() == [0, 2]  # overflow
    with pytest.raises(ConfigError, match="strictly increasing"):
        assign_buckets(lengths, np.array([10, 10]))


def test_geometric_boundaries_match_tensor2tensor():
    bounds = geometric_boundaries(2048)
    assert bounds.size == 63 and bounds[0] == 8  # ALGORITHMS.md 7.5: 63 below 2048
    assert geometric_boundaries(4096).size == 71


@settings(max_examples=50, deadline=None)
@given(lengths=st.lists(st.integers(1, 600), min_size=1, max_size=200),
       max_tokens=st.integers(1, 1024), num_buckets=st.integers(1, 6))
def test_token_budget_batches_respect_the_budget(lengths, max_tokens, num_buckets):
    lengths = np.array(lengths)
    bounds = bucket_boundaries(lengths, num_buckets)
    batches = token_budget_batches(lengths, max_tokens, boundaries=bounds)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(lengths.size))
    bucket = assign_buckets(lengths, bounds)
    for batch in batches:
        assert batch.size == 1 or batch.size * lengths[batch].max() <= max_tokens
        assert np.unique(bucket[batch]).size == 1


def test_token_budget_batches_known_answer(caplog):
    lengths = np.array([100, 10, 30, 300, 20, 10])
    batches = token_budget_batches(lengths, 64)
    assert [b.tolist() for b in batches] == [[3], [0], [2, 4], [1, 5]]
    assert "2 documents exceed max_tokens=64" in caplog.text
    assert padding_efficiency(lengths, batches) == pytest.approx(470 / (300 + 100 + 60 + 20))
