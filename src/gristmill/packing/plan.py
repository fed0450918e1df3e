"""`PackPlan`: the CSR-style result every packer returns, and its efficiency figures.

Row r holds segments `order[row_offsets[r]:row_offsets[r + 1]]` (indices into `segments`), in
the order they are laid out in the row. Packing efficiency = real tokens / (rows * seq_len)
(ALGORITHMS.md 7.1) is reported by `efficiency` and `describe()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from gristmill.packing.segments import Segments


@dataclass(frozen=True)
class PackPlan:
    """Which segments go into which row.

    Attributes:
        seq_len: tokens per row (capacity).
        order: (m,) int64 segment indices in row order; a permutation of range(len(segments)).
        row_offsets: (rows + 1,) int64 CSR offsets into `order`; row_offsets[0] == 0.
        segments: the segments packed (wrapped re-splits documents at row boundaries, so the
            plan carries its own).
        packer: name of the packer that made the plan.
    """

    seq_len: int
    order: np.ndarray
    row_offsets: np.ndarray
    segments: Segments
    packer: str = ""

    @property
    def num_rows(self) -> int:
        """Number of packed rows."""
        return int(self.row_offsets.shape[0] - 1)

    @property
    def tokens(self) -> int:
        """Real (non-padding) tokens over all rows."""
        return int(self.segments.length.sum())

    @property
    def efficiency(self) -> float:
        """tokens / (num_rows * seq_len); 0.0 for a plan with no rows."""
        capacity = self.num_rows * self.seq_len
        return self.tokens / capacity if capacity else 0.0

    def row_segments(self, row: int) -> np.ndarray:
        """(k,) int64 segment indices of one row, in layout order."""
        return self.order[self.row_offsets[row]:self.row_offsets[row + 1]]

    def rows(self) -> Iterator[np.ndarray]:
        """Yield each row's segment indices, row 0 first."""
        for row in range(self.num_rows):
            yield self.row_segments(row)

    def row_lengths(self) -> np.ndarray:
        """(rows,) int64 real tokens per row."""
        cum = np.concatenate([[0], np.cumsum(self.segments.length[self.order])])
        return cum[self.row_offsets[1:]] - cum[self.row_offsets[:-1]]

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary for manifests and stats (plain ints and floats)."""
        per_row = np.diff(self.row_offsets)
        return {
            "packer": self.packer,
            "seq_len": self.seq_len,
            "documents": int(np.unique(self.segments.doc).size),
            "segments": len(self.segments),
            "rows": self.num_rows,
            "tokens": self.tokens,
            "padding_tokens": self.num_rows * self.seq_len - self.tokens,
            "efficiency": float(self.efficiency),
            "lower_bound_rows": -(-self.tokens // self.seq_len),
            "max_segments_per_row": int(per_row.max()) if per_row.size else 0,
            "mean_segments_per_row": float(per_row.mean()) if per_row.size else 0.0,
        }


def plan_from_bins(placed: np.ndarray, bins: np.ndarray, segments: Segments, seq_len: int,
                   packer: str) -> PackPlan:
    """Build a plan from the packer's placements; a row lays out its segments in placement order.

    Args:
        placed: (m,) int64 segment indices in the order the packer placed them.
        bins: (m,) int64 row of each placed segment, rows numbered 0..rows-1, none empty.
    """
    bins = np.asarray(bins, dtype=np.int64)
    order = np.asarray(placed, dtype=np.int64)[np.argsort(bins, kind="stable")]
    counts = np.bincount(bins) if bins.size else np.zeros(0, np.int64)
    row_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return PackPlan(seq_len, order, row_offsets, segments, packer)
