"""Batch-size warmup indexed by tokens consumed: a linear ramp or stagewise steps.

LLM pretraining ramps the batch from small to full over the first tokens (GPT-3: 32k tokens to
the full batch over 4-12B tokens; ALGORITHMS.md 5.3). Schedules are indexed by tokens, not steps
(5.4), so a run that changes its batch keeps the same schedule per unit of data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gristmill.errors import ConfigError, InputError
from gristmill.samplers.controllers.base import BatchSizeController, check_int


class ScheduleController(BatchSizeController):
    """Global batch as a function of tokens consumed; needs no gradient statistics.

    Either a linear ramp from `start_batch` to `end_batch` over `ramp_tokens`, or `stages`:
    `[(tokens, batch), ...]` with increasing token boundaries, the first at 0, where the batch of
    the last boundary reached applies. Batches are rounded up to a multiple of
    `micro_batch_rows * world_size`. The schedule is followed as written, so a decreasing
    schedule shrinks the batch (this policy explicitly allows it).

    Args:
        end_batch: rows at the end of a linear ramp.
        ramp_tokens: tokens over which the ramp goes from start to end (0: start at the end).
        stages: stagewise schedule instead of the ramp.
        start_batch: rows at 0 tokens for the ramp; default `micro_batch_rows * world_size`.
        max_batch: cap; default the largest batch in the schedule.
        **kwargs: the other `BatchSizeController` arguments.

    Example:
        >>> ctl = ScheduleController(micro_batch_rows=4, start_batch=8, end_batch=64,
        ...                          ramp_tokens=1000)
        >>> ctl.observe(tokens=500)  # half way: 8 + 28 = 36 rows, rounded up to 36
        >>> ctl.plan().global_batch
        36
    """

    name = "schedule"
    monotone = False

    def __init__(self, *, end_batch: int | None = None, ramp_tokens: int | None = None,
                 stages: Sequence[tuple[int, int]] | None = None, start_batch: int | None = None,
                 max_batch: int | None = None, **kwargs: Any) -> None:
        self.stages = None if stages is None else _check_stages(stages, end_batch, ramp_tokens)
        if self.stages is not None:
            start_batch, peak = self.stages[0][1], max(batch for _, batch in self.stages)
        elif end_batch is None or ramp_tokens is None:
            raise ConfigError("a schedule needs `end_batch` and `ramp_tokens` (a linear ramp) "
                              "or `stages` [(tokens, batch), ...]")
        else:
            self.end_batch = check_int("end_batch", end_batch, 1)
            self.ramp_tokens = check_int("ramp_tokens", ramp_tokens, 0)
            peak = max(self.end_batch, start_batch or 0)
        super().__init__(start_batch=start_batch, max_batch=peak if max_batch is None
                         else max_batch, **kwargs)
        # The ramp starts at the requested rows (default one quantum), before rounding.
        self.start_rows = self.quantum if start_batch is None else start_batch
        self.tokens = 0
        self.global_batch = self.batch_at(0)  # ramp_tokens=0 starts at the end

    def batch_at(self, tokens: int) -> int:
        """The quantised global batch after `tokens` tokens."""
        if self.stages is not None:
            return self.quantise([batch for bound, batch in self.stages if bound <= tokens][-1])
        frac = 1.0 if tokens >= self.ramp_tokens else tokens / self.ramp_tokens
        return self.quantise(self.start_rows + frac * (self.end_batch - self.start_rows))

    def observe(self, *, tokens: int) -> None:
        """Advance by the `tokens` the optimizer step just consumed (over all ranks)."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise InputError(f"`tokens` must be an integer >= 0, got {tokens!r}; pass the "
                             "tokens the last optimizer step consumed")
        self.steps += 1
        self.tokens += tokens
        self._advance(self.batch_at(self.tokens))

    def _measure(self) -> bool:
        return False

    def _policy_config(self) -> dict[str, Any]:
        if self.stages is not None:
            return {"stages": [list(stage) for stage in self.stages]}
        return {"start_batch": self.start_rows, "end_batch": self.end_batch,
                "ramp_tokens": self.ramp_tokens}

    def _policy_state(self) -> dict[str, Any]:
        return {"tokens": self.tokens}

    def _load_policy_state(self, state: dict[str, Any]) -> None:
        self.tokens = int(state["tokens"])


def _check_stages(stages: Sequence[tuple[int, int]], end_batch: int | None,
                  ramp_tokens: int | None) -> list[tuple[int, int]]:
    if end_batch is not None or ramp_tokens is not None:
        raise ConfigError("pass either `stages` or `end_batch` with `ramp_tokens`, not both")
    pairs = [(check_int("stages tokens", int(t), 0), check_int("stages batch", int(b), 1))
             for t, b in stages]
    bounds = [t for t, _ in pairs]
    increasing = all(a < b for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    if not pairs or bounds[0] != 0 or not increasing:
        raise ConfigError(f"`stages` must be [(tokens, batch), ...] with strictly increasing "
                          f"token boundaries starting at 0, got {list(stages)!r}")
    return pairs
