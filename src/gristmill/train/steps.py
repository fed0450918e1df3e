"""One optimizer step's backward passes: token-normalised accumulation and gradient statistics.

Normalisation (ALGORITHMS.md 7.4): every micro-batch's summed loss is divided by the label
tokens of the *whole* step before backward, so accumulating micro-batches gives exactly the
gradient of one big batch with the same rows (a per-micro-batch mean would weight a token of
a sparse micro-batch more than one of a full micro-batch).

Gradient statistics for the batch-size controllers (5.1, 5.2) come from the accumulation
itself: the gradient is read after each backward, and the difference d_i is chunk i's share.
With b chunks, h_i = b * d_i are b samples whose plain mean is the step gradient G, so
`grad_sq_norms = |h_i|^2` with `mean_grad_sq_norm = |G|^2` feed the norm test (samples of
`rows_per_chunk` rows) and the same numbers are McCandlish's small- and big-batch norms. The
cost is one flattened copy of the gradient per chunk, no per-sample `vmap`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gristmill.train.batches import row_chunks
from gristmill.train.model import label_count, token_losses


@dataclass
class GradStats:
    """Per-chunk squared norms `|h_i|^2`, the step's `|G|^2`, and rows behind each."""

    chunk_sq_norms: list[float] = field(default_factory=list)
    step_sq_norm: float = 0.0
    chunk_rows: list[int] = field(default_factory=list)

    @property
    def rows_per_chunk(self) -> int:
        return max(1, round(sum(self.chunk_rows) / max(len(self.chunk_rows), 1)))


class _Probe:
    """Reads the accumulated gradient after each backward; differences are chunk shares."""

    def __init__(self, model: nn.Module) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.prev: torch.Tensor | None = None
        self.diff_sq: list[torch.Tensor] = []

    def flat(self) -> torch.Tensor:
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          .float() for p in self.params])

    def record(self) -> None:
        cur = self.flat()
        delta = cur if self.prev is None else cur - self.prev
        self.diff_sq.append(delta.square().sum())
        self.prev = cur

    def finish(self, rows: list[int]) -> GradStats:
        b = len(self.diff_sq)
        total = self.prev.square().sum() if self.prev is not None else torch.zeros(())
        sq = (torch.stack(self.diff_sq) * b * b).double().tolist() if b else []
        return GradStats(sq, float(total), rows)


def accumulate(model: nn.Module, batches: list[dict[str, Any]], *,
               autocast: AbstractContextManager[Any], grad_chunks: int | None = None
               ) -> tuple[float, int, GradStats | None]:
    """Backward over `batches` with the loss normalised by all their label tokens.

    Args:
        model: a `ProxyLM` (or any module with its forward), in training mode.
        batches: micro-batches on the model's device; one with `loss_weights` ([R, L], e.g.
            a weighted CoLM coreset) back-propagates the token losses times those weights
            (the logged loss stays unweighted).
        autocast: context for the forward passes (bf16 autocast on GPU, else a null context).
        grad_chunks: when given, back-propagate each micro-batch in this many row chunks and
            return their gradient statistics.

    Returns:
        `(loss_sum, label_tokens, stats)`: summed token loss and label tokens of the step
        (their ratio is the step's mean loss), and `GradStats` or None.
    """
    total = sum(label_count(b["labels"]) for b in batches)
    denom = max(total, 1)
    probe = _Probe(model) if grad_chunks else None
    losses: list[torch.Tensor] = []  # summed on the device: one sync per step, not per pass
    rows: list[int] = []
    for batch in batches:
        for part in row_chunks(batch, grad_chunks) if grad_chunks else [batch]:
            with autocast:
                out = model(part["input_ids"], part["position_ids"], part["segment_ids"],
                            labels=part["labels"])
            weights = part.get("loss_weights")
            if weights is None:
                (out.loss_sum / denom).backward()
            else:  # a weighted coreset (CoLM, weighted=True): CRAIG weights per token
                weighted = (token_losses(out.logits, part["labels"]).float()
                            * weights.to(out.logits.device)).sum()
                (weighted / denom).backward()
            losses.append(out.loss_sum.detach())
            if probe is not None:
                probe.record()
                rows.append(int(part["input_ids"].shape[0]))
    loss_sum = float(torch.stack(losses).double().sum()) if losses else 0.0
    return loss_sum, total, probe.finish(rows) if probe is not None else None
