"""Held-out loss per domain (or per cluster, selector...) from packed batches.

Each label token belongs to the segment its `segment_ids` entry names, and each segment
record carries its `domain`, `cluster` and `selector`, so one pass over mixed packed batches
gives the loss of every domain: mean cross-entropy per label token (the first token of a
document predicts nothing and counts nowhere). Because attention stays inside documents, the
result equals evaluating every document alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from gristmill.errors import InputError
from gristmill.train.batches import check_batch, to_device
from gristmill.train.model import IGNORE_INDEX, token_losses


def evaluate(model: nn.Module, batches: Iterable[dict[str, Any]], *, by: str = "domain",
             autocast: AbstractContextManager[Any] | None = None) -> dict[Any, float]:
    """Mean loss per label token for each value of the segments' `by` field.

    Args:
        model: a `ProxyLM` (anything whose forward returns `.logits` for
            `(input_ids, position_ids, segment_ids)`); run on its own device, in eval mode.
        batches: packed batches with `segments` (GristmillStream's).
        by: the segment field to group by: "domain", "cluster", "selector", "doc_id"...
        autocast: context for the forward passes (default none).

    Returns:
        `{value: loss}` for every value that has label tokens, in first-seen order.
    """
    return {key: loss / count for key, (loss, count) in
            evaluate_totals(model, batches, by=by, autocast=autocast).items()}


def evaluate_totals(model: nn.Module, batches: Iterable[dict[str, Any]], *, by: str = "domain",
                    autocast: AbstractContextManager[Any] | None = None
                    ) -> dict[Any, tuple[float, int]]:
    """`{value: (summed loss, label tokens)}`: what `evaluate` averages (token-weighted)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals: dict[Any, list[float]] = {}
    try:
        with torch.no_grad(), autocast or contextlib.nullcontext():
            for batch in batches:
                _add_batch(model, to_device(check_batch(batch), device), by, totals)
    finally:
        model.train(was_training)
    return {key: (loss, int(count)) for key, (loss, count) in totals.items()}


def _add_batch(model: nn.Module, batch: dict[str, Any], by: str,
               totals: dict[Any, list[float]]) -> None:
    segments = batch.get("segments")
    if segments is None:
        raise InputError("evaluation batches need `segments` (GristmillStream's) to attribute "
                         "each token to its domain")
    if segments and by not in segments[0]:
        raise InputError(f"segments have no field {by!r}; group by one of "
                         f"{sorted(segments[0])}")
    labels, seg = batch["labels"], batch["segment_ids"]
    logits = model(batch["input_ids"], batch["position_ids"], seg).logits
    losses = token_losses(logits, labels)
    counted = (labels != IGNORE_INDEX) & (seg >= 0)
    counted[:, 0] = False  # nothing before a row's first token: token_losses gives it no loss
    ids = seg[counted]
    n = len(segments)
    seg_loss = torch.zeros(n, dtype=torch.float64, device=ids.device).index_add_(
        0, ids, losses[counted].double()).tolist()
    seg_count = torch.bincount(ids, minlength=n).tolist()
    for record, loss, count in zip(segments, seg_loss, seg_count, strict=True):
        if count:
            entry = totals.setdefault(record[by], [0.0, 0])
            entry[0] += loss
            entry[1] += count
