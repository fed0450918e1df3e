"""Concatenate-and-chunk packing, the Megatron / TRL `wrapped` baseline (ALGORITHMS.md 7.2).

Documents are laid end to end in input order and the stream is cut every `seq_len` tokens,
ignoring document boundaries: every row is full except possibly the last. A document crossing
a cut becomes two (or more) segments, so the plan carries its own re-split `Segments`; with
varlen attention (cu_seqlens) the pieces still never attend across documents.
"""

from __future__ import annotations

import numpy as np

from gristmill.packing.plan import PackPlan, plan_from_bins
from gristmill.packing.segments import Segments, check_lengths, check_seq_len


def pack(lengths: np.ndarray, seq_len: int) -> PackPlan:
    """Pack documents by concatenating them in input order and cutting every `seq_len` tokens.

    Args:
        lengths: (n,) integer tokens per document, each >= 1.
        seq_len: tokens per row, >= 2.

    Returns:
        PackPlan whose segments are the documents cut at row boundaries; efficiency is 1.0
        except for the last row's tail.

    Example:
        >>> plan = pack(np.array([3, 4, 2]), 4)
        >>> plan.row_lengths().tolist(), plan.segments.end.tolist()
        ([4, 4, 1], [3, 1, 4, 1, 2])
    """
    seq_len = check_seq_len(seq_len)
    lengths = check_lengths(lengths)
    stream_end = np.cumsum(lengths)
    stream_start = stream_end - lengths
    first_row = stream_start // seq_len
    pieces = (stream_end - 1) // seq_len - first_row + 1
    doc = np.repeat(np.arange(lengths.size, dtype=np.int64), pieces)
    piece = np.arange(doc.size, dtype=np.int64) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    row = first_row[doc] + piece
    lo = np.maximum(stream_start[doc], row * seq_len)
    hi = np.minimum(stream_end[doc], (row + 1) * seq_len)
    segments = Segments(doc=doc, start=lo - stream_start[doc], end=hi - stream_start[doc])
    return plan_from_bins(np.arange(doc.size, dtype=np.int64), row, segments, seq_len, "wrapped")
