"""Grow the batch toward the gradient noise scale B_simple (McCandlish et al. 2018).

`B_simple = tr(Sigma) / |G|^2` (per-example covariance over squared true gradient) estimates the
critical batch size past which larger batches stop saving steps ("An Empirical Model of
Large-Batch Training", ALGORITHMS.md 5.2). It is estimated for free from two batch sizes that
data-parallel training already has: a micro-batch's gradient before accumulation/all-reduce
(`b_small` rows) and the step's full gradient (`b_big` rows). Since
`E|g_b|^2 = |G|^2 + tr(Sigma) / b`, two sizes give unbiased estimates of both terms (App. A.1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gristmill.errors import ConfigError, InputError
from gristmill.samplers.controllers.base import BatchSizeController, check_int, check_stat


def noise_components(small_sq_norm: float, big_sq_norm: float, small_batch: int,
                     big_batch: int) -> tuple[float, float]:
    """Unbiased one-step estimates `(|G|^2, tr(Sigma))` from two batch sizes.

    Args:
        small_sq_norm: `|g_small|^2`, squared norm of a gradient averaged over `small_batch` rows.
        big_sq_norm: `|g_big|^2`, squared norm of the gradient averaged over `big_batch` rows.
        small_batch: rows behind `small_sq_norm`, < `big_batch`.
        big_batch: rows behind `big_sq_norm`.

    Returns:
        `(g_sq_est, trace_est)`; either may be negative on one step (they are noisy).
    """
    if not 1 <= small_batch < big_batch:
        raise InputError(f"noise scale needs two batch sizes, got small_batch={small_batch}, "
                         f"big_batch={big_batch}; accumulate >= 2 micro-batches (start_batch) "
                         "or use more than one rank")
    g_sq = (big_batch * big_sq_norm - small_batch * small_sq_norm) / (big_batch - small_batch)
    trace = (small_sq_norm - big_sq_norm) / (1 / small_batch - 1 / big_batch)
    return g_sq, trace


class NoiseScaleController(BatchSizeController):
    """Grow the global batch to `c * B_simple`, from smoothed two-batch estimates, never shrinking.

    Args:
        target_scale: c in `target = c * B_simple` (training at B_crit ~ B_noise costs about
            twice the minimum steps and examples, McCandlish et al. 2018 section 2.3).
        smoothing: EMA factor for the numerator and denominator estimates, in [0, 1).
        min_observations: steps observed before the controller acts; single-step estimates are
            noisy and can be negative.
        **kwargs: the `BatchSizeController` arguments (`micro_batch_rows`, `max_batch`, ...).
    """

    name = "noise_scale"

    def __init__(self, *, target_scale: float = 1.0, smoothing: float = 0.9,
                 min_observations: int = 10, **kwargs: Any) -> None:
        if not (math.isfinite(target_scale) and target_scale > 0):
            raise ConfigError(f"`target_scale` must be a finite number > 0, got {target_scale!r}")
        if not 0.0 <= smoothing < 1.0:
            raise ConfigError(f"`smoothing` must be in [0, 1), got {smoothing!r}; 0.9 averages "
                              "about the last 10 steps")
        self.target_scale, self.smoothing = float(target_scale), float(smoothing)
        self.min_observations = check_int("min_observations", min_observations, 1)
        # Zero-initialised EMAs: their bias corrections (1 - smoothing^n) are equal and cancel in
        # the ratio, so B_simple needs no correction.
        self.ema_g_sq, self.ema_trace, self.observations = 0.0, 0.0, 0
        super().__init__(**kwargs)

    @property
    def b_simple(self) -> float | None:
        """The smoothed `tr(Sigma) / |G|^2` in rows (inf when the signal estimate is <= 0)."""
        if self.observations == 0:
            return None
        if self.ema_trace <= 0:
            return 0.0  # no measurable noise: no reason to grow
        return self.ema_trace / self.ema_g_sq if self.ema_g_sq > 0 else math.inf

    def observe(self, *, small_sq_norm: float | Sequence[float] | None = None,
                big_sq_norm: float | None = None, small_batch: int | None = None,
                big_batch: int | None = None) -> None:
        """Record one optimizer step's gradient norms.

        Args:
            small_sq_norm: `|g_small|^2` of a micro-batch's gradient (before accumulation and
                all-reduce), or a sequence of them (their mean is used: still unbiased).
            big_sq_norm: `|g_big|^2` of the step's accumulated, all-reduced gradient.
            small_batch: rows behind `small_sq_norm`; default `micro_batch_rows`.
            big_batch: rows behind `big_sq_norm`; default the step's `global_batch`.

        Statistics are needed only when the last `plan().measure` was True; otherwise pass none.
        """
        measure = self._measure()
        if small_sq_norm is None or big_sq_norm is None:
            if measure:
                raise InputError("noise_scale observe() needs small_sq_norm and big_sq_norm "
                                 "this step (plan().measure is True)")
            self.steps += 1
            return
        small = check_stat("small_sq_norm", float(np.mean(np.asarray(small_sq_norm, float))))
        g_sq, trace = noise_components(
            small, check_stat("big_sq_norm", big_sq_norm),
            self.micro_batch_rows if small_batch is None else small_batch,
            self.global_batch if big_batch is None else big_batch)
        self.steps += 1
        self._update(g_sq, trace)

    def _update(self, g_sq: float, trace: float) -> None:
        beta = self.smoothing
        self.ema_g_sq = beta * self.ema_g_sq + (1 - beta) * g_sq
        self.ema_trace = beta * self.ema_trace + (1 - beta) * trace
        self.observations += 1
        if self.observations >= self.min_observations:
            self._advance(self.target_scale * self.b_simple)

    def _policy_config(self) -> dict[str, Any]:
        return {"target_scale": self.target_scale, "smoothing": self.smoothing,
                "min_observations": self.min_observations}

    def _policy_state(self) -> dict[str, Any]:
        return {"ema_g_sq": self.ema_g_sq, "ema_trace": self.ema_trace,
                "observations": self.observations}

    def _load_policy_state(self, state: dict[str, Any]) -> None:
        self.ema_g_sq, self.ema_trace = float(state["ema_g_sq"]), float(state["ema_trace"])
        self.observations = int(state["observations"])
