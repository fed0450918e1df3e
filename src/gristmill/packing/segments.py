"""Split documents into row-sized segments before packing, so no packer drops or truncates tokens.

A document longer than the row (`seq_len`) becomes consecutive segments of `seq_len` tokens, the
last one holding the remainder (TRL's `bfd_split`, ALGORITHMS.md 7.2). Every packer works on
segments, and a `PackPlan` carries the segments it packs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gristmill.errors import ConfigError


@dataclass(frozen=True)
class Segments:
    """Token ranges of source documents, one per segment.

    Attributes:
        doc: (m,) int64 index of the source document.
        start: (m,) int64 first token offset within the document.
        end: (m,) int64 end offset within the document (exclusive).
    """

    doc: np.ndarray
    start: np.ndarray
    end: np.ndarray

    @property
    def length(self) -> np.ndarray:
        """(m,) int64 tokens per segment."""
        return self.end - self.start

    def __len__(self) -> int:
        return int(self.doc.shape[0])


def check_seq_len(seq_len: int) -> int:
    """Return `seq_len` as an int; a row needs two tokens for one next-token prediction."""
    if isinstance(seq_len, bool) or int(seq_len) != seq_len or seq_len < 2:
        raise ConfigError(f"`seq_len` must be >= 2, got {seq_len!r}; pass the model's row length")
    return int(seq_len)


def check_lengths(lengths: np.ndarray) -> np.ndarray:
    """Return document lengths as (n,) int64, refusing non-positive ones by index.

    Empty documents are dropped at ingest, so a length <= 0 here means the lengths do not come
    from a gristmill token store.
    """
    arr = np.asarray(lengths)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ConfigError(f"`lengths` must be a 1-D integer array, got dtype {arr.dtype} "
                          f"shape {arr.shape}; pass one token count per document")
    arr = arr.astype(np.int64, copy=False)
    bad = np.flatnonzero(arr <= 0)
    if bad.size:
        raise ConfigError(f"`lengths` must be >= 1, but document {int(bad[0])} has length "
                          f"{int(arr[bad[0]])} ({bad.size} such); drop empty documents first")
    return arr


def split_segments(lengths: np.ndarray, seq_len: int) -> Segments:
    """Cut every document into consecutive segments of at most `seq_len` tokens.

    Args:
        lengths: (n,) integer token count per document, each >= 1.
        seq_len: tokens per packed row, >= 2.

    Returns:
        Segments ordered by (doc, start); a document of length l gives ceil(l / seq_len).

    Example:
        >>> s = split_segments(np.array([5, 2]), 2)
        >>> s.doc.tolist(), s.start.tolist(), s.end.tolist()
        ([0, 0, 0, 1], [0, 2, 4, 0], [2, 4, 5, 2])
    """
    seq_len = check_seq_len(seq_len)
    lengths = check_lengths(lengths)
    pieces = -(-lengths // seq_len)
    doc = np.repeat(np.arange(lengths.size, dtype=np.int64), pieces)
    first = np.cumsum(pieces) - pieces
    start = (np.arange(doc.size, dtype=np.int64) - np.repeat(first, pieces)) * seq_len
    end = np.minimum(start + seq_len, lengths[doc])
    return Segments(doc=doc, start=start, end=end)
