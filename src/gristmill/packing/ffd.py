"""First-fit decreasing packing via a max segment tree over rows' remaining space (7.2).

Segments go in longest first (stable: ties by document index, then offset), each into the
lowest-numbered row with enough room. FFD uses at most 11/9 OPT + 6/9 rows (Dosa 2007, tight).
BFD (`bfd.py`) is the default and faster; FFD is here as the textbook baseline axolotl's
multipack builds on.
"""

from __future__ import annotations

import numpy as np

from gristmill.packing.plan import PackPlan, plan_from_bins
from gristmill.packing.segments import check_seq_len, split_segments


def pack(lengths: np.ndarray, seq_len: int) -> PackPlan:
    """Pack documents into rows of `seq_len` tokens by first-fit decreasing.

    Args:
        lengths: (n,) integer tokens per document, each >= 1; longer ones are split first.
        seq_len: tokens per row, >= 2.

    Returns:
        PackPlan, deterministic.
    """
    seq_len = check_seq_len(seq_len)
    segments = split_segments(lengths, seq_len)
    placed = np.argsort(-segments.length, kind="stable")
    bins = _first_fit(segments.length[placed], seq_len)
    return plan_from_bins(placed, bins, segments, seq_len, "ffd")


def _first_fit(sizes: np.ndarray, seq_len: int) -> np.ndarray:
    """Row of each item, for (m,) int64 sizes sorted descending, each in [1, seq_len]."""
    # As in BFD, items over half a row each open their own row, in order.
    num_big = int(np.searchsorted(-sizes, -(seq_len // 2), side="left"))
    bins = np.empty(sizes.size, dtype=np.int64)
    bins[:num_big] = np.arange(num_big)
    # Leaves: one per possible row (never more rows than items), unopened rows have full room,
    # so the leftmost leaf that fits is the first open row with room, or the next new row.
    width = 1 << max(0, int(sizes.size - 1).bit_length())
    level = np.full(width, seq_len, dtype=np.int64)
    level[:num_big] = seq_len - sizes[:num_big]
    levels = [level]
    while level.size > 1:
        level = np.maximum(level[0::2], level[1::2])
        levels.append(level)
    tree = [0] + [int(v) for lv in reversed(levels) for v in lv.tolist()]  # heap layout, root 1
    for k, size in enumerate(sizes[num_big:].tolist(), start=num_big):
        node = 1
        while node < width:
            node <<= 1
            if tree[node] < size:
                node += 1
        bins[k] = node - width
        tree[node] -= size
        node >>= 1
        while node:
            best = max(tree[2 * node], tree[2 * node + 1])
            if tree[node] == best:
                break  # ancestors unchanged
            tree[node] = best
            node >>= 1
    return bins
