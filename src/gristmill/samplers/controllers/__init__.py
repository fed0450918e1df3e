"""Batch-size controllers: how many fixed micro-batches to accumulate per optimizer step.

Design A of ALGORITHMS.md 5.4: the stream's micro-batches never change; a controller in the
trainer returns a `Plan` (global batch, accumulation steps, LR multiplier) before each optimizer
step and `observe`s that step's statistics after it. Registered policies:

- `norm_test`: AdAdaGrad's norm test, grow to `ceil(tr(Sigma) / (eta^2 ||g||^2))` (5.1).
- `noise_scale`: McCandlish's `B_simple` from micro-batch and full-batch gradient norms (5.2).
- `schedule`: a linear or stagewise ramp indexed by tokens consumed (5.3); a constant batch is
  `stages=[(0, batch)]`.

Example:
    >>> ctl = make_controller("norm_test", micro_batch_rows=8, max_batch=256, optimizer="sgd")
    >>> ctl.plan()
    Plan(global_batch=8, accum_steps=1, lr_multiplier=1.0, measure=True)
"""

from __future__ import annotations

from typing import Any

from gristmill.errors import ConfigError
from gristmill.samplers.controllers.base import LR_EXPONENTS, BatchSizeController, Plan
from gristmill.samplers.controllers.noise_scale import NoiseScaleController, noise_components
from gristmill.samplers.controllers.norm_test import (
    NormTestController,
    gradient_moments,
    norm_test_batch,
    pooled_trace_var,
)
from gristmill.samplers.controllers.schedule import ScheduleController

CONTROLLERS: dict[str, type[BatchSizeController]] = {
    "norm_test": NormTestController,
    "noise_scale": NoiseScaleController,
    "schedule": ScheduleController,
}


def make_controller(name: str, **kwargs: Any) -> BatchSizeController:
    """Build the registered controller `name` with its keyword arguments.

    Raises:
        ConfigError: `name` is not registered (the message lists the valid names), or an
            argument is invalid.
    """
    if name not in CONTROLLERS:
        raise ConfigError(f"unknown batch-size controller {name!r}; choose one of "
                          f"{sorted(CONTROLLERS)}")
    return CONTROLLERS[name](**kwargs)


__all__ = [
    "CONTROLLERS",
    "LR_EXPONENTS",
    "BatchSizeController",
    "NoiseScaleController",
    "NormTestController",
    "Plan",
    "ScheduleController",
    "gradient_moments",
    "make_controller",
    "noise_components",
    "norm_test_batch",
    "pooled_trace_var",
]
