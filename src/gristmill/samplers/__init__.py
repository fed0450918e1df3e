"""IterableDataset streams, mixing schedules, batch-size controllers, resumable state.

The stream (`GristmillStream`) lands with issue #5; the batch-size controllers are here. Data
flows one way, storage -> embed -> selectors -> packing -> samplers, and no stage imports a
later one.

Batch-size controllers (`controllers/`, ALGORITHMS.md 5.4 Design A): `make_controller(name, ...)`
builds a `norm_test`, `noise_scale` or `schedule` controller whose `plan()` says how many fixed
micro-batches to accumulate per optimizer step and the learning-rate multiplier.
"""

from gristmill.samplers.controllers import (
    CONTROLLERS,
    BatchSizeController,
    NoiseScaleController,
    NormTestController,
    Plan,
    ScheduleController,
    make_controller,
)

__all__ = [
    "CONTROLLERS",
    "BatchSizeController",
    "NoiseScaleController",
    "NormTestController",
    "Plan",
    "ScheduleController",
    "make_controller",
]
