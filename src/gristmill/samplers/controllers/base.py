"""The contract every batch-size controller follows (ALGORITHMS.md 5.4, Design A).

The stream yields fixed micro-batches of `micro_batch_rows` rows per rank; a controller, living in
the trainer, decides how many of them each rank accumulates before the next optimizer step and
the matching learning-rate multiplier. Because the sample stream never changes, exactly-once,
determinism and resume are untouched: resume state is `(micro_batches_consumed,
controller.state_dict())`.

Rules every policy keeps: decisions change only at optimizer-step boundaries (`observe` is
called once per step, `plan` before the next); the global batch is a multiple of
`micro_batch_rows * world_size` (rounded up) and never above `max_batch` (rounded down); every
decision is a pure function of the observed statistics, so ranks that observe all-reduced
statistics agree without a broadcast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from gristmill.errors import ConfigError, InputError

# Learning-rate exponent alpha in lr * (b / b0) ** alpha: linear for SGD, square root for
# adaptive methods (Granziol et al., JMLR 2022; Malladi et al. 2022; ALGORITHMS.md 5.3).
LR_EXPONENTS: dict[str, float] = {"sgd": 1.0, "adam": 0.5, "adamw": 0.5, "adagrad": 0.5,
                                  "rmsprop": 0.5}


@dataclass(frozen=True)
class Plan:
    """What the next optimizer step does.

    Attributes:
        global_batch: rows per optimizer step over all ranks, a multiple of
            `micro_batch_rows * world_size`.
        accum_steps: micro-batches each rank accumulates for the step
            (`global_batch // (micro_batch_rows * world_size)`).
        lr_multiplier: factor for the base learning rate, `(global_batch / base_batch) ** alpha`.
        measure: whether the controller uses gradient statistics from this step; when False the
            training loop may skip computing them and call `observe()` with none.
    """

    global_batch: int
    accum_steps: int
    lr_multiplier: float
    measure: bool = True


class BatchSizeController:
    """Base class: quantising, capping, LR coupling and resumable state shared by all policies.

    Subclasses implement `observe(...)` (their statistics) and the `_policy_config`,
    `_policy_state`, `_load_policy_state` hooks.

    Args:
        micro_batch_rows: rows in one micro-batch on one rank (the stream's fixed batch), >= 1.
        max_batch: cap on the global batch in rows; rounded down to a multiple of
            `micro_batch_rows * world_size`.
        world_size: data-parallel ranks, >= 1.
        base_batch: global rows at which the learning-rate multiplier is 1 (the batch the base LR
            was tuned for); default `micro_batch_rows * world_size`.
        start_batch: first global batch in rows (rounded up); default `base_batch`, capped.
        optimizer: "sgd" (alpha 1) or "adam", "adamw", "adagrad", "rmsprop" (alpha 0.5).
        lr_exponent: explicit alpha in [0, 1], overriding `optimizer`.
        max_lr_multiplier: optional cap on the LR multiplier: past the noise scale the best Adam
            LR plateaus ("surge", Li et al. 2024; ALGORITHMS.md 5.3).

    Raises:
        ConfigError: an argument is out of range, or `max_batch` < `micro_batch_rows * world_size`.
    """

    name: ClassVar[str] = "base"
    monotone: ClassVar[bool] = True  # norm-test semantics: the batch never shrinks

    def __init__(self, *, micro_batch_rows: int, max_batch: int, world_size: int = 1,
                 base_batch: int | None = None, start_batch: int | None = None,
                 optimizer: str = "adam", lr_exponent: float | None = None,
                 max_lr_multiplier: float | None = None) -> None:
        self.micro_batch_rows = check_int("micro_batch_rows", micro_batch_rows, 1)
        self.world_size = check_int("world_size", world_size, 1)
        self.quantum = self.micro_batch_rows * self.world_size
        self.max_batch = _check_cap(max_batch, self.quantum)
        self.base_batch = self.quantum if base_batch is None else check_int(
            "base_batch", base_batch, 1)
        self.lr_exponent = _resolve_exponent(optimizer, lr_exponent)
        self.max_lr_multiplier = _check_positive("max_lr_multiplier", max_lr_multiplier)
        if start_batch is not None and check_int("start_batch", start_batch, 1) > max_batch:
            raise ConfigError(f"`start_batch` must be <= max_batch ({max_batch}), got "
                              f"{start_batch}; lower it or raise max_batch")
        self.global_batch = self.quantise(self.base_batch if start_batch is None else start_batch)
        self.steps = 0

    def quantise(self, rows: float) -> int:
        """Round `rows` up to a multiple of `micro_batch_rows * world_size`, within [quantum, cap].

        A request at or past the cap, infinite included (pure noise), maps to `max_batch`.
        """
        if not rows < self.max_batch:
            return self.max_batch
        # 1e-12 slack so float round-off in an exact ratio (e.g. 64.00000000001) adds no quantum.
        units = math.ceil(max(rows, 1.0) / self.quantum * (1.0 - 1e-12))
        return min(max(units, 1) * self.quantum, self.max_batch)

    def lr_multiplier(self, global_batch: int) -> float:
        """`(global_batch / base_batch) ** alpha`, capped at `max_lr_multiplier` when set."""
        mult = (global_batch / self.base_batch) ** self.lr_exponent
        return mult if self.max_lr_multiplier is None else min(mult, self.max_lr_multiplier)

    def plan(self) -> Plan:
        """The batch, accumulation and LR multiplier for the next optimizer step."""
        return Plan(global_batch=self.global_batch,
                    accum_steps=self.global_batch // self.quantum,
                    lr_multiplier=self.lr_multiplier(self.global_batch),
                    measure=self._measure())

    def observe(self, **stats: Any) -> None:
        """Record the statistics of the optimizer step just taken (see each policy)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The JSON-able configuration a saved state must match to be loaded."""
        return {"micro_batch_rows": self.micro_batch_rows, "world_size": self.world_size,
                "max_batch": self.max_batch, "base_batch": self.base_batch,
                "lr_exponent": self.lr_exponent, "max_lr_multiplier": self.max_lr_multiplier,
                **self._policy_config()}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: policy name, configuration, and the decision state."""
        return {"policy": self.name, "config": self.config(),
                "state": {"steps": self.steps, "global_batch": self.global_batch,
                          **self._policy_state()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` output; the future plans are then identical to the saved run's.

        Raises:
            ConfigError: the state comes from another policy or a differently configured
                controller; the message names the first differing field.
        """
        if state.get("policy") != self.name:
            raise ConfigError(f"cannot load a `{state.get('policy')}` controller state into a "
                              f"`{self.name}` controller; build the policy that saved it")
        mine, saved = self.config(), state.get("config", {})
        for field in sorted(set(mine) | set(saved)):
            if mine.get(field) != saved.get(field):
                raise ConfigError(
                    f"cannot load controller state: `{field}` differs (saved "
                    f"{saved.get(field)!r}, this controller {mine.get(field)!r}); build the "
                    "controller with the saved configuration")
        self.steps = int(state["state"]["steps"])
        self.global_batch = int(state["state"]["global_batch"])
        self._load_policy_state(state["state"])

    def _advance(self, target_rows: float) -> None:
        """Move to the quantised target; monotone policies never shrink."""
        rows = self.quantise(target_rows)
        self.global_batch = max(rows, self.global_batch) if self.monotone else rows

    def _measure(self) -> bool:
        return self.global_batch < self.max_batch

    def _policy_config(self) -> dict[str, Any]:
        return {}

    def _policy_state(self) -> dict[str, Any]:
        return {}

    def _load_policy_state(self, state: dict[str, Any]) -> None:
        return None


def check_int(name: str, value: int, low: int) -> int:
    """`value` if it is an integer >= `low` (ConfigError naming `name` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"`{name}` must be an integer >= {low}, got {value!r}; pass a whole "
                          f"number of rows >= {low}")
    return value


def _check_positive(name: str, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"`{name}` must be a finite number > 0, got {value!r}")
    return None if value is None else float(value)


def _check_cap(max_batch: int, quantum: int) -> int:
    check_int("max_batch", max_batch, 1)
    if max_batch < quantum:
        raise ConfigError(f"`max_batch` must be >= micro_batch_rows * world_size ({quantum}), got "
                          f"{max_batch}; raise max_batch or use smaller micro-batches")
    return max_batch // quantum * quantum


def _resolve_exponent(optimizer: str, lr_exponent: float | None) -> float:
    if lr_exponent is not None:
        if not (0.0 <= lr_exponent <= 1.0):
            raise ConfigError(f"`lr_exponent` must be in [0, 1], got {lr_exponent!r}; use 1 for "
                              "SGD (linear rule) or 0.5 for Adam (square-root rule)")
        return float(lr_exponent)
    if str(optimizer).lower() not in LR_EXPONENTS:
        raise ConfigError(f"`optimizer` must be one of {sorted(LR_EXPONENTS)}, got "
                          f"{optimizer!r}; or pass lr_exponent explicitly")
    return LR_EXPONENTS[str(optimizer).lower()]


def check_stat(name: str, value: float) -> float:
    """A finite, non-negative statistic as a plain float (InputError otherwise)."""
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise InputError(f"`{name}` must be a finite number >= 0, got {value!r}; check the "
                         "gradient statistics passed to observe()")
    return value
