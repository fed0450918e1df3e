"""Micro-batch helpers for the trainer: checking, moving, trimming to a token budget, chunking.

A batch is what `GristmillStream` yields: `input_ids`, `labels`, `position_ids`,
`segment_ids` ([R, L] int64) and `segments` (one dict per packed segment; segment id i is
`segments[i]`). Trimming keeps the first k real tokens in row-major order and turns the rest
into padding (segment -1, label -100), so a run stops on exactly its token budget.
"""

from __future__ import annotations

from typing import Any

import torch

from gristmill.errors import InputError
from gristmill.train.model import IGNORE_INDEX

TENSOR_KEYS = ("input_ids", "labels", "position_ids", "segment_ids")


def check_batch(batch: Any) -> dict[str, Any]:
    """`batch` if it holds the four [R, L] tensors of a packed micro-batch."""
    if not isinstance(batch, dict):
        raise InputError(f"a training batch must be a dict like GristmillStream's, got "
                         f"{type(batch).__name__}; iterate the stream with "
                         f"DataLoader(stream, batch_size=None)")
    missing = [k for k in TENSOR_KEYS if k not in batch]
    if missing:
        raise InputError(f"a training batch lacks {missing}; it needs {list(TENSOR_KEYS)} "
                         f"as GristmillStream yields them")
    shape = tuple(batch["input_ids"].shape)
    bad = [k for k in TENSOR_KEYS if tuple(batch[k].shape) != shape or len(shape) != 2]
    if bad:
        raise InputError(f"batch tensors {bad} do not match input_ids' [rows, seq_len] shape "
                         f"{shape}")
    return batch


def real_tokens(batch: dict[str, Any]) -> int:
    """Non-padding tokens (segment id >= 0)."""
    return int((batch["segment_ids"] >= 0).sum())


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A shallow copy with the four tensors on `device` (other entries as they are)."""
    out = dict(batch)
    for key in TENSOR_KEYS:
        out[key] = batch[key].to(device, non_blocking=True)
    return out


def trim_batch(batch: dict[str, Any], keep_tokens: int) -> dict[str, Any]:
    """Keep the first `keep_tokens` real tokens (row-major); the rest become padding.

    Trimmed tokens get segment id -1 and label -100 (they attend only to themselves and
    predict nothing); `segments` are shortened or dropped to match and `num_tokens` updated.
    """
    seg = batch["segment_ids"]
    real = seg >= 0
    order = torch.cumsum(real.reshape(-1).to(torch.int64), 0).view_as(seg)
    keep = real & (order <= keep_tokens)
    out = dict(batch)
    out["segment_ids"] = torch.where(keep, seg, torch.full_like(seg, -1))
    out["labels"] = torch.where(keep, batch["labels"], torch.full_like(seg, IGNORE_INDEX))
    out["num_tokens"] = int(keep.sum())
    if "segments" in batch:
        kept_per_seg = torch.bincount(seg[keep], minlength=len(batch["segments"])).tolist()
        segments = []
        for record, kept in zip(batch["segments"], kept_per_seg, strict=True):
            if kept:
                segments.append({**record, "end": record["start"] + kept}
                                if "start" in record else dict(record))
        # Segment ids index `segments`: renumber the survivors (they keep their order).
        survivors = torch.tensor([i for i, k in enumerate(kept_per_seg) if k], dtype=torch.int64)
        remap = torch.full((len(kept_per_seg) + 1,), -1, dtype=torch.int64)
        remap[survivors] = torch.arange(survivors.numel(), dtype=torch.int64)
        out["segment_ids"] = remap[out["segment_ids"]]  # padding's -1 indexes remap[-1] == -1
        out["segments"] = segments
    return out


def fit_budget(batches: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """The leading batches holding at most `budget` real tokens, the last one trimmed."""
    out, left = [], budget
    for batch in batches:
        if left <= 0:
            break
        n = real_tokens(batch)
        out.append(batch if n <= left else trim_batch(batch, left))
        left -= min(n, left)
    return out


def row_chunks(batch: dict[str, Any], chunks: int) -> list[dict[str, Any]]:
    """Split the four tensors into up to `chunks` groups of rows (for gradient statistics)."""
    rows = batch["input_ids"].shape[0]
    keys = TENSOR_KEYS + (("loss_weights",) if "loss_weights" in batch else ())
    parts = [torch.tensor_split(batch[k], min(chunks, rows)) for k in keys]
    return [dict(zip(keys, group, strict=True)) for group in zip(*parts, strict=True)]
