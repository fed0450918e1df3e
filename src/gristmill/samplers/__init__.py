"""IterableDataset streams, mixing schedules, batch-size controllers, resumable state.

`GristmillStream` (stream.py) streams packed micro-batches from token stores: token-based
domain mixing (`mixing`: weights, temperature, Mosaic-style proportion/repeat/choose, and
`Schedule`s such as end-of-training domain upsampling), streaming best-fit packing in a bounded
buffer (`planner`), exactly-once sharding over ranks x DataLoader workers with equal steps per
rank, RS2 subsets, and exact resume through `state_dict()` / `load_state_dict()`. Data flows one
way, storage -> embed -> selectors -> packing -> samplers, and no stage imports a later one.

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
from gristmill.samplers.mixing import Mixture, Phase, Schedule, resolve_mixture
from gristmill.samplers.stream import GristmillStream, no_collate

__all__ = [
    "CONTROLLERS",
    "BatchSizeController",
    "NoiseScaleController",
    "NormTestController",
    "Plan",
    "ScheduleController",
    "make_controller",
    "GristmillStream",
    "Mixture",
    "Phase",
    "Schedule",
    "no_collate",
    "resolve_mixture",
]
