"""Turn plan rows into model inputs: token ids, labels, restarting positions, varlen metadata.

Layout of one micro-batch of R rows (ALGORITHMS.md 7.4, 7.7), every tensor [R, seq_len]:

- `input_ids`: segments back to back, then `pad_id` to the end of the row.
- `labels`: input_ids (the model shifts, Hugging Face convention), -100 on each segment's first
  token (nothing before it in its document's context: no cross-document prediction) and on
  padding.
- `position_ids`: 0..len-1 per segment. A row's padding tail is one pseudo-sequence of its own
  and restarts at 0 too, so boundaries inferred from position resets (HF padding-free) agree
  with `cu_seqlens`.
- `doc_ids`: source document per token, -1 on padding.
- `cu_seqlens`: (s + 1,) int32 over the flattened [R * seq_len] tokens, FlashAttention varlen
  style: one sequence per segment plus one per padded row's tail, so cu_seqlens[-1] ==
  R * seq_len; `max_seqlen` is a Python int over the same sequences.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gristmill.errors import ConfigError, InputError
from gristmill.packing.plan import PackPlan

IGNORE_INDEX = -100  # the loss ignore label of PyTorch cross_entropy and Hugging Face models


def build_rows(plan: PackPlan, tokens: np.ndarray, doc_offsets: np.ndarray, *, pad_id: int,
               rows: np.ndarray | None = None, return_tensors: str = "np",
               segments: bool = True) -> dict[str, Any]:
    """Materialise plan rows as a packed micro-batch.

    Args:
        plan: the packing plan.
        tokens: (T,) uint32 or int64 token ids of all documents back to back.
        doc_offsets: (n + 1,) int64; document i is tokens[doc_offsets[i]:doc_offsets[i + 1]].
        pad_id: token id for padding.
        rows: (R,) plan row indices forming the micro-batch; default every row.
        return_tensors: "np" for numpy arrays, "pt" for torch tensors.
        segments: also return the per-segment records (one Python dict per segment: about a
            quarter of the time with ~200-token documents); False leaves the key out and
            changes nothing else.

    Returns:
        dict with input_ids, labels, position_ids, doc_ids ([R, seq_len] int64), cu_seqlens
        ((s + 1,) int32), max_seqlen (int) and segments (list of {"doc", "start", "end", "row",
        "offset"} per real segment, row = position in the micro-batch).
    """
    if return_tensors not in ("np", "pt"):
        raise ConfigError(f"`return_tensors` must be 'np' or 'pt', got {return_tensors!r}")
    rows = _check_rows(plan, rows)
    seg, row_local = _gather(plan, rows)
    segs = plan.segments
    doc, start, end = segs.doc[seg], segs.start[seg], segs.end[seg]
    length = end - start
    doc_offsets = np.asarray(doc_offsets, dtype=np.int64)
    tokens = np.asarray(tokens)
    _check_source(doc, end, doc_offsets, tokens.size)
    out, offset = _layout(plan.seq_len, rows.size, row_local, length, tokens,
                          doc_offsets[doc] + start, doc, pad_id)
    if segments:
        out["segments"] = [{"doc": d, "start": s, "end": e, "row": r, "offset": o}
                           for d, s, e, r, o in zip(doc.tolist(), start.tolist(), end.tolist(),
                                                    row_local.tolist(), offset.tolist(),
                                                    strict=True)]
    if return_tensors == "pt":
        import torch

        out = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in out.items()}
    return out


def layout_rows(seq_len: int, num_rows: int, row_local: np.ndarray, length: np.ndarray,
                ids: np.ndarray, seg_labels: np.ndarray, *,
                pad_id: int) -> tuple[dict[str, Any], np.ndarray]:
    """Lay segments out back to back in their rows; the tensors of a packed micro-batch.

    Args:
        seq_len: tokens per row.
        num_rows: rows in the micro-batch (rows without segments are all padding).
        row_local: (s,) int64 row of each segment, non-decreasing (segments in layout order).
        length: (s,) int64 tokens per segment.
        ids: (sum(length),) int64 token ids of the segments back to back.
        seg_labels: (s,) int64 value written to `doc_ids` for each segment's tokens.
        pad_id: token id for padding.

    Returns:
        (tensors, offset): input_ids, labels, position_ids, doc_ids as [num_rows, seq_len]
        int64, cu_seqlens and max_seqlen; and (s,) each segment's offset within its row.
    """
    length = np.asarray(length, dtype=np.int64)
    ids = np.asarray(ids)
    if ids.size != int(length.sum()):
        raise ConfigError(f"`ids` holds {ids.size} tokens but the segments' lengths add up to "
                          f"{int(length.sum())}; pass the segments' tokens back to back")
    return _layout(seq_len, num_rows, row_local, length, ids,
                   np.cumsum(length) - length, seg_labels, pad_id)


def _layout(seq_len: int, num_rows: int, row_local: np.ndarray, length: np.ndarray,
            source: np.ndarray, src_start: np.ndarray, seg_labels: np.ndarray,
            pad_id: int) -> tuple[dict[str, Any], np.ndarray]:
    """Segment i's tokens are source[src_start[i]:src_start[i] + length[i]].

    The grid is cut into pieces in flattened order: each row's segments, then its padding tail
    (if any). Every per-token array is one `np.repeat` of a per-piece value plus a running
    index, so the grid is written in a few sequential passes with no scatter.
    """
    row_local = np.asarray(row_local, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    fill = np.bincount(row_local, weights=length, minlength=num_rows).astype(np.int64)
    if fill.size > num_rows or (fill.size and fill.max() > seq_len):
        raise ConfigError(f"segments overflow the micro-batch: a row holds {int(fill.max())} "
                          f"tokens > seq_len {seq_len}, or a row index >= {num_rows}")
    starts = np.cumsum(length) - length
    offset = starts - (np.cumsum(fill) - fill)[row_local]
    if fill.size * seq_len >= 2**31:
        raise ConfigError(f"micro-batch of {fill.size} rows x {seq_len} overflows int32 "
                          f"cu_seqlens; pass fewer `rows`")
    pad_len = seq_len - fill
    padded = np.flatnonzero(pad_len > 0)
    # Pieces: segments, then padding tails; a row's tail comes after its segments.
    order = np.argsort(np.concatenate([row_local * 2, padded * 2 + 1]), kind="stable")
    p_len = np.concatenate([length, pad_len[padded]])[order]
    p_src = np.concatenate([np.asarray(src_start, dtype=np.int64),
                            np.zeros(padded.size, np.int64)])[order]
    p_label = np.concatenate([np.asarray(seg_labels, dtype=np.int64),
                              np.full(padded.size, -1, np.int64)])[order]
    tail = order >= length.size
    cu = np.zeros(p_len.size + 1, dtype=np.int64)
    np.cumsum(p_len, out=cu[1:])
    size = num_rows * seq_len
    position_ids = np.arange(size, dtype=np.int64)
    position_ids -= np.repeat(cu[:-1], p_len)
    input_ids = np.empty(size, dtype=np.int64)
    if source.size:
        # Padding reads source[0:pad_len] (clipped to its end) and is overwritten below.
        src = np.repeat(p_src, p_len)
        src += position_ids
        if source.dtype == np.int64:
            np.take(source, src, mode="clip", out=input_ids)
        else:
            input_ids[:] = np.take(source, src, mode="clip")
    labels = input_ids.copy()
    labels[cu[:-1][~tail & (p_len > 0)]] = IGNORE_INDEX  # each segment's first token
    if padded.size:
        tail_first, tail_len = cu[:-1][tail], p_len[tail]
        pad_at = np.arange(int(tail_len.sum()), dtype=np.int64)
        pad_at += np.repeat(tail_first - (np.cumsum(tail_len) - tail_len), tail_len)
        input_ids[pad_at] = pad_id
        labels[pad_at] = IGNORE_INDEX
    shape = (num_rows, seq_len)
    out: dict[str, Any] = {"input_ids": input_ids.reshape(shape), "labels": labels.reshape(shape),
                           "position_ids": position_ids.reshape(shape),
                           "doc_ids": np.repeat(p_label, p_len).reshape(shape),
                           "cu_seqlens": cu.astype(np.int32),
                           "max_seqlen": int(p_len.max()) if p_len.size else 0}
    return out, offset


def _check_rows(plan: PackPlan, rows: np.ndarray | None) -> np.ndarray:
    if rows is None:
        return np.arange(plan.num_rows, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= plan.num_rows):
        raise ConfigError(f"`rows` must be in [0, {plan.num_rows}), got {rows.min()}.."
                          f"{rows.max()}; pass indices of this plan's rows")
    return rows


def _gather(plan: PackPlan, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment indices of `rows` in layout order, and the micro-batch row of each."""
    lo, hi = plan.row_offsets[rows], plan.row_offsets[rows + 1]
    counts = hi - lo
    pos = np.arange(int(counts.sum()), dtype=np.int64)
    pos += np.repeat(lo - (np.cumsum(counts) - counts), counts)
    return plan.order[pos], np.repeat(np.arange(rows.size, dtype=np.int64), counts)


def _check_source(doc: np.ndarray, end: np.ndarray, doc_offsets: np.ndarray,
                  num_tokens: int) -> None:
    if doc.size and doc.max() + 1 >= doc_offsets.size:
        raise InputError(f"plan names document {int(doc.max())} but `doc_offsets` covers "
                         f"{doc_offsets.size - 1} documents; pass the store the plan was made for")
    short = np.flatnonzero(doc_offsets[doc + 1] - doc_offsets[doc] < end)
    if short.size:
        raise InputError(f"document {int(doc[short[0]])} is shorter in `doc_offsets` than in "
                         f"the plan; pass the store the plan was made for")
    if doc.size and int((doc_offsets[doc] + end).max()) > num_tokens:
        raise InputError(f"`doc_offsets` reach token {int((doc_offsets[doc] + end).max())} but "
                         f"`tokens` holds {num_tokens}; pass the tokens and offsets of one store")
