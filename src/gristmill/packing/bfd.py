"""Best-fit decreasing packing in O(n log n): the default packer (ALGORITHMS.md 7.2).

Segments go in by length, longest first (stable: ties by document index, then offset); each
goes into the open row with the least remaining space that still fits (ties: the oldest row),
else a new row. This is the best-fit packing of Ding et al., "Fewer Truncations Improve Language
Modeling" (ICML 2024); BFD uses at most about 11/9 OPT rows (Johnson 1973) and in practice hits
the lower bound ceil(tokens / seq_len).

Why it is fast: remaining capacities are integers in [1, seq_len], so instead of TRL's pure
Python segment tree we keep a sorted list of the distinct capacities that have an open row
(`bisect` finds the smallest one >= the length, in C) and a heap of row ids per capacity. The
list never holds more than seq_len entries, so its inserts are short memmoves.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from heapq import heappop, heappush

import numpy as np

from gristmill.packing.plan import PackPlan, plan_from_bins
from gristmill.packing.segments import check_seq_len, split_segments


def pack(lengths: np.ndarray, seq_len: int) -> PackPlan:
    """Pack documents into rows of `seq_len` tokens by best-fit decreasing.

    Args:
        lengths: (n,) integer tokens per document, each >= 1; longer ones are split first.
        seq_len: tokens per row, >= 2.

    Returns:
        PackPlan; deterministic, and its row lengths depend only on the multiset of lengths.

    Example:
        >>> plan = pack(np.array([5, 4, 3, 3, 1]), 8)
        >>> [plan.segments.length[r].tolist() for r in plan.rows()]
        [[5, 3], [4, 3, 1]]
    """
    seq_len = check_seq_len(seq_len)
    segments = split_segments(lengths, seq_len)
    placed = np.argsort(-segments.length, kind="stable")
    sizes = segments.length[placed]
    bins = _best_fit(sizes, seq_len)
    return plan_from_bins(placed, bins, segments, seq_len, "bfd")


def _best_fit(sizes: np.ndarray, seq_len: int) -> np.ndarray:
    """Row of each item, for (m,) int64 sizes sorted descending, each in [1, seq_len]."""
    # Items over half a row never share: each opens its own row, in order (no earlier row can
    # have that much room left), so place them with numpy and loop only over the small ones.
    num_big = int(np.searchsorted(-sizes, -(seq_len // 2), side="left"))
    bins = np.empty(sizes.size, dtype=np.int64)
    bins[:num_big] = np.arange(num_big)
    heaps: list[list[int]] = [[] for _ in range(seq_len + 1)]
    for row, room in enumerate((seq_len - sizes[:num_big]).tolist()):
        heaps[room].append(row)  # rows arrive in increasing order: each list is a valid heap
    caps = [c for c in range(1, seq_len + 1) if heaps[c]]
    num_rows = num_big
    for k, size in enumerate(sizes[num_big:].tolist(), start=num_big):
        i = bisect_left(caps, size)
        if i == len(caps):
            row, room = num_rows, seq_len - size
            num_rows += 1
        else:
            cap = caps[i]
            heap = heaps[cap]
            row, room = heappop(heap), cap - size
            if not heap:
                del caps[i]
        bins[k] = row
        if room:
            heap = heaps[room]
            if not heap:
                insort(caps, room)
            heappush(heap, row)
    return bins
