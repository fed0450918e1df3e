"""AdAdaGrad's norm test: grow the batch until the gradient estimate's noise is small.

The norm test (Byrd, Chin, Nocedal, Wu 2012; used by AdAdaGrad, Lau, Liu, Kolar 2024,
arXiv 2402.11215; ALGORITHMS.md 5.1) asks for `tr(Sigma_hat) / b <= eta^2 ||g_bar||^2`, i.e. the
variance of the mean gradient is small next to its squared norm, and suggests
`b_norm = ceil(tr(Sigma_hat) / (eta^2 ||g_bar||^2))`. The batch becomes `max(b, b_norm)`, capped:
it never shrinks. The statistic is scale-invariant (multiplying every gradient by c cancels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gristmill.errors import ConfigError, InputError
from gristmill.samplers.controllers.base import BatchSizeController, check_int, check_stat


def gradient_moments(per_sample_grads: Any) -> tuple[float, float]:
    """Trace of the unbiased per-sample covariance and the squared norm of the mean gradient.

    Args:
        per_sample_grads: (b, p) numpy array or torch tensor, b >= 2, one flattened gradient per
            sample (or per micro-batch). Torch tensors stay on their device; only two scalars
            leave it.

    Returns:
        `(trace_var, mean_grad_sq_norm)`: `sum_i ||g_i - g_bar||^2 / (b - 1)` (Bessel) and
        `||g_bar||^2`, as float64 Python floats.
    """
    grads = per_sample_grads.detach().double() if hasattr(per_sample_grads, "detach") else (
        np.asarray(per_sample_grads, dtype=np.float64))
    if grads.ndim != 2 or grads.shape[0] < 2:
        raise InputError(f"`per_sample_grads` must be (b, p) with b >= 2, got shape "
                         f"{tuple(grads.shape)}; flatten each gradient into one row")
    mean = grads.mean(0)
    # Centre before squaring: sum ||g_i||^2 - b ||g_bar||^2 cancels catastrophically.
    trace_var = float(((grads - mean) ** 2).sum()) / (grads.shape[0] - 1)
    return trace_var, float((mean**2).sum())


def pooled_trace_var(counts: Sequence[int], trace_vars: Sequence[float],
                     mean_grad_sq_norms: Sequence[float], pooled_mean_grad_sq_norm: float) -> float:
    """`tr(Sigma_hat)` of the concatenated batch from per-micro-batch (or per-rank) summaries.

    The law of total variance (ALGORITHMS.md 5.1), in exact form: the total sum of squares is the
    within part `sum_r (n_r - 1) tr_r` plus the between part `sum_r n_r ||g_r||^2 - N ||g||^2`
    (because `sum_r n_r g_r = N g`), so only scalars need to be all-reduced.

    Args:
        counts: (R,) samples in each part, each >= 1.
        trace_vars: (R,) each part's unbiased `tr(Sigma_hat)` (any value where n_r == 1).
        mean_grad_sq_norms: (R,) each part's `||g_r||^2`.
        pooled_mean_grad_sq_norm: `||g||^2` of the mean over all N samples.

    Returns:
        The unbiased `tr(Sigma_hat)` over all N samples, as `gradient_moments` would give.
    """
    n = np.asarray(counts, dtype=np.float64)
    within = float(np.sum((n - 1) * np.asarray(trace_vars, dtype=np.float64)))
    between = float(np.sum(n * np.asarray(mean_grad_sq_norms, dtype=np.float64)))
    between -= n.sum() * pooled_mean_grad_sq_norm
    return max(within + between, 0.0) / (n.sum() - 1)


def norm_test_batch(trace_var: float, mean_grad_sq_norm: float, eta: float) -> float:
    """`tr(Sigma_hat) / (eta^2 ||g_bar||^2)` in samples: inf for pure noise, 0 for no noise."""
    if trace_var == 0:
        return 0.0
    if mean_grad_sq_norm == 0:
        return math.inf
    return trace_var / (eta**2 * mean_grad_sq_norm)


class NormTestController(BatchSizeController):
    """Grow the global batch to `ceil(tr(Sigma_hat) / (eta^2 ||g_bar||^2))`, never shrinking.

    Args:
        eta: norm-test constant > 0; 0.1 is the AdAdaGrad default (0.25-0.5 in their CIFAR runs,
            ALGORITHMS.md 5.1); smaller eta asks for larger batches.
        test_every: run the test every this many optimizer steps (AdAdaGrad's `test_interval`).
        **kwargs: the `BatchSizeController` arguments (`micro_batch_rows`, `max_batch`, ...).

    Example:
        >>> ctl = NormTestController(micro_batch_rows=8, max_batch=64)
        >>> ctl.observe(trace_var=2.0, mean_grad_sq_norm=1.0)  # wants 2 / 0.01 = 200 rows
        >>> ctl.plan().global_batch, ctl.plan().accum_steps
        (64, 8)
    """

    name = "norm_test"

    def __init__(self, *, eta: float = 0.1, test_every: int = 1, **kwargs: Any) -> None:
        if not (math.isfinite(eta) and eta > 0):
            raise ConfigError(f"`eta` must be a finite number > 0, got {eta!r}; AdAdaGrad uses "
                              "0.1 (smaller grows the batch faster)")
        self.eta = float(eta)
        self.test_every = check_int("test_every", test_every, 1)
        self.last_suggestion: float | None = None  # rows the last test asked for (for logging)
        super().__init__(**kwargs)

    def observe(self, per_sample_grads: Any = None, *, grad_sq_norms: Any = None,
                mean_grad_sq_norm: float | None = None, trace_var: float | None = None,
                rows_per_sample: int = 1) -> None:
        """Record one optimizer step; give the statistics in one of three forms.

        Args:
            per_sample_grads: (b, p) array or tensor of per-sample gradients (or per-micro-batch
                mean gradients, with `rows_per_sample` set), b >= 2.
            grad_sq_norms: (b,) per-sample `||g_i||^2`, with `mean_grad_sq_norm`.
            mean_grad_sq_norm: `||g_bar||^2` of the mean gradient over the b samples.
            trace_var: unbiased `tr(Sigma_hat)`, with `mean_grad_sq_norm` (e.g. from
                `pooled_trace_var` over micro-batches or ranks).
            rows_per_sample: rows behind each sample; pass the micro-batch rows when the samples
                are micro-batch means (their covariance is `Sigma / rows`).

        Statistics are needed only when the last `plan().measure` was True; otherwise pass none.
        """
        measure = self._measure()
        stats = (per_sample_grads, grad_sq_norms, trace_var)
        if measure and all(s is None for s in stats):
            raise InputError("norm_test observe() needs per_sample_grads, grad_sq_norms with "
                             "mean_grad_sq_norm, or trace_var with mean_grad_sq_norm this step")
        self.steps += 1
        if not measure:
            return
        trace, mean_sq = self._moments(per_sample_grads, grad_sq_norms, mean_grad_sq_norm,
                                       trace_var)
        rows = check_int("rows_per_sample", rows_per_sample, 1)
        self.last_suggestion = norm_test_batch(trace, mean_sq, self.eta) * rows
        self._advance(self.last_suggestion)

    def _moments(self, per_sample_grads: Any, grad_sq_norms: Any,
                 mean_grad_sq_norm: float | None, trace_var: float | None) -> tuple[float, float]:
        if per_sample_grads is not None:
            return gradient_moments(per_sample_grads)
        if mean_grad_sq_norm is None:
            raise InputError("`mean_grad_sq_norm` is required with grad_sq_norms or trace_var")
        mean_sq = check_stat("mean_grad_sq_norm", mean_grad_sq_norm)
        if trace_var is not None:
            return check_stat("trace_var", trace_var), mean_sq
        norms = np.asarray(grad_sq_norms, dtype=np.float64).ravel()
        if norms.size < 2:
            raise InputError(f"`grad_sq_norms` needs >= 2 samples, got {norms.size}")
        # sum_i ||g_i - g_bar||^2 = sum_i ||g_i||^2 - b ||g_bar||^2; clamp float round-off.
        return max(float(norms.sum()) - norms.size * mean_sq, 0.0) / (norms.size - 1), mean_sq

    def _measure(self) -> bool:
        return self.global_batch < self.max_batch and self.steps % self.test_every == 0

    def _policy_config(self) -> dict[str, Any]:
        return {"eta": self.eta, "test_every": self.test_every}
