"""Online batch filters: which of the drawn micro-batches the trainer steps on.

A filter is a callable `filter(model, batches) -> batches` with a `group_size` attribute:
per optimizer step the trainer draws `accum_steps * group_size` micro-batches, hands them to
the filter (on the model's device, under the training autocast) and back-propagates what it
returns. `hard_batch(k)` is the cheap baseline of ALGORITHMS.md 9.3 (Sahayam et al.,
arXiv 2304.03486): a forward pass over every candidate, then train on the highest-loss
1/k of them; the CoLM coreset selector plugs into the same hook.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from gristmill.errors import ConfigError


class BatchFilter(Protocol):
    """`group_size` candidates per kept micro-batch; `__call__` returns the ones to train on."""

    group_size: int

    def __call__(self, model: nn.Module,
                 batches: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


class HardBatchFilter:
    """Keep the `len(batches) // k` (at least 1) micro-batches of highest mean token loss.

    Args:
        k: candidates per kept micro-batch (>= 1; 1 keeps everything).

    Attributes:
        last_losses: the candidates' mean losses at the last call (NaN without label tokens).
    """

    def __init__(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"hard_batch `k` must be an integer >= 1, got {k!r}")
        self.group_size = k
        self.last_losses: list[float] = []

    def __call__(self, model: nn.Module, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.last_losses = [_mean_loss(model, b) for b in batches]
        keep = max(1, len(batches) // self.group_size)
        # Highest loss first, ties to the earlier batch; batches without labels go last.
        rank = sorted(range(len(batches)), key=lambda i: (
            -self.last_losses[i] if self.last_losses[i] == self.last_losses[i] else
            float("inf"), i))
        return [batches[i] for i in sorted(rank[:keep])]


def hard_batch(k: int) -> HardBatchFilter:
    """The hard-batch baseline: train on the highest-loss micro-batch of every `k` drawn."""
    return HardBatchFilter(k)


def _mean_loss(model: nn.Module, batch: dict[str, Any]) -> float:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(batch["input_ids"], batch["position_ids"], batch["segment_ids"],
                        labels=batch["labels"])
    finally:
        model.train(was_training)
    return float(out.loss_sum) / out.label_tokens if out.label_tokens else float("nan")
