"""`train`: AdamW on a `ProxyLM` over `GristmillStream` micro-batches, the reference loop.

Per optimizer step (ALGORITHMS.md 5.4, design A): ask the batch-size controller for its plan
(`accum_steps` micro-batches, an LR multiplier), draw `accum_steps * group_size` micro-batches
from the stream, let an optional batch filter keep some (hard-batch, CoLM), trim the last one
so the run stops on exactly `max_tokens` real tokens, back-propagate with the loss normalised
by the step's label tokens (7.4), step at `lr * schedule(tokens) * lr_multiplier`, and tell
the controller what it measures (tokens for a schedule; chunk gradient norms for the norm test
and the noise scale, see `steps`). Held-out loss per domain every `eval_every_tokens` and at
the end. Everything runs in a forked RNG seeded from `TrainConfig.seed`: deterministic on CPU,
and the caller's global RNG is left alone.

Example:
    >>> stream = GristmillStream("out/tokens", seq_len=512, micro_batch_rows=8)  # doctest: +SKIP
    >>> result = train(stream, ProxyConfig.cpu(stream.vocab_size),             # doctest: +SKIP
    ...                TrainConfig(max_tokens=1_000_000), eval_batches=held_out)
    >>> result.eval_loss, result.summary()["eval_loss_web"]                     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from gristmill.errors import ConfigError
from gristmill.samplers.controllers import (
    BatchSizeController,
    NoiseScaleController,
    NormTestController,
    Plan,
    ScheduleController,
)
from gristmill.train.batches import check_batch, fit_budget, real_tokens, to_device
from gristmill.train.config import TrainConfig, lr_factor, resolve_device
from gristmill.train.evaluation import evaluate_totals
from gristmill.train.filters import BatchFilter
from gristmill.train.model import ProxyConfig, ProxyLM
from gristmill.train.steps import GradStats, accumulate

log = logging.getLogger(__name__)
EvalBatches = dict[str, list[dict[str, Any]]] | Iterable[dict[str, Any]] | Callable[[], Any]


@dataclass
class TrainState:
    """What a later `train(..., resume=state)` continues from (e.g. the next kMQ round)."""

    model: ProxyLM
    optimizer: torch.optim.Optimizer
    tokens: int = 0
    steps: int = 0


@dataclass
class TrainResult:
    """What a run did.

    Attributes:
        curves: one dict per `log_every` steps: tokens, tokens_read, step, train_loss (token
            mean over the window), lr, batch_rows (rows stepped on), accum_steps,
            lr_multiplier.
        eval_curves: one dict per evaluation: tokens, step, eval_loss, eval_loss_<domain>.
        eval_loss: final held-out loss over all label tokens (token-weighted), or None.
        eval_loss_by_domain: final held-out loss per domain.
        eval_tokens_by_domain: label tokens behind each domain's loss.
        tokens: real tokens trained on (== max_tokens unless the stream ended first).
        tokens_read: real tokens drawn from the stream (more than `tokens` with a filter).
        steps: optimizer steps; micro_batches: micro-batches back-propagated.
        wall_s: seconds the run took; stream_ended: the stream ran out before the budget.
        state: model and optimizer, to evaluate further or resume (`model` is
            `state.model`).
    """

    curves: list[dict[str, Any]]
    eval_curves: list[dict[str, Any]]
    eval_loss: float | None
    eval_loss_by_domain: dict[str, float]
    eval_tokens_by_domain: dict[str, int]
    tokens: int
    tokens_read: int
    steps: int
    micro_batches: int
    wall_s: float
    stream_ended: bool
    state: TrainState = field(repr=False)

    @property
    def model(self) -> ProxyLM:
        """The trained model (`state.model`)."""
        return self.state.model

    def summary(self) -> dict[str, Any]:
        """Scalar columns for a results table: tokens, steps, wall_s, eval_loss(_<domain>)."""
        row = {"tokens": self.tokens, "tokens_read": self.tokens_read, "steps": self.steps,
               "wall_s": self.wall_s, "eval_loss": self.eval_loss}
        row.update({f"eval_loss_{d}": v for d, v in self.eval_loss_by_domain.items()})
        return row


def train(stream: Iterable[dict[str, Any]], model_config: ProxyConfig,
          train_config: TrainConfig, *, eval_batches: EvalBatches | None = None,
          controller: BatchSizeController | None = None,
          batch_filter: BatchFilter | None = None, log_every: int = 10,
          progress: bool = False, resume: TrainState | None = None,
          until_tokens: int | None = None) -> TrainResult:
    """Train a proxy LM on `stream` for `train_config.max_tokens` real tokens.

    Args:
        stream: a `GristmillStream`, a DataLoader over one (`batch_size=None`), or any
            iterable of its batches.
        model_config: the model to build (ignored shape-wise with `resume`, but must match).
        train_config: optimiser, schedule, budget, device.
        eval_batches: held-out batches (with `segments`): a list, a dict of lists (e.g. per
            domain; all are evaluated, tokens attributed by their segments' domain), or a
            callable returning either (called at each evaluation).
        controller: a `BatchSizeController` (norm_test, noise_scale or schedule) deciding the
            micro-batches per step and the LR multiplier; None steps on every micro-batch.
        batch_filter: `filter(model, batches) -> batches` with a `group_size`, e.g.
            `hard_batch(4)`; None keeps every micro-batch.
        log_every: optimizer steps per `curves` entry.
        progress: show a progress bar over tokens.
        resume: continue this model, optimizer and token count (`result.state`).
        until_tokens: stop at this many total tokens (a round of a longer run); the schedule
            still spans `max_tokens`.

    Returns:
        A `TrainResult`.
    """
    cfg = train_config
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ConfigError(f"`log_every` must be an integer >= 1, got {log_every!r}")
    _check_controller(controller, stream)
    device = resolve_device(cfg.device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), _threads(cfg.cpu_threads):
        torch.manual_seed(cfg.seed)
        state = resume or _fresh_state(model_config, cfg, device)
        if state.model.config != model_config:
            raise ConfigError(f"`resume` holds a model of {state.model.config}, not "
                              f"{model_config}; pass the config it was built with")
        loop = _Loop(stream, cfg, state, device, controller, batch_filter, log_every)
        stop = cfg.max_tokens if until_tokens is None else min(until_tokens, cfg.max_tokens)
        return loop.run(stop, eval_batches, progress)


def _fresh_state(model_config: ProxyConfig, cfg: TrainConfig,
                 device: torch.device) -> TrainState:
    model = ProxyLM(model_config).to(device)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": other, "weight_decay": 0.0}], lr=cfg.lr,
                                  betas=cfg.betas)
    return TrainState(model, optimizer)


def _check_controller(controller: BatchSizeController | None, stream: Any) -> None:
    if controller is None:
        return
    known = (ScheduleController, NormTestController, NoiseScaleController)
    if not isinstance(controller, known):
        raise ConfigError(f"the trainer feeds schedule, norm_test and noise_scale "
                          f"controllers; got {type(controller).__name__}")
    if controller.world_size != 1:
        raise ConfigError(f"the trainer runs one process; build the controller with "
                          f"world_size=1, got {controller.world_size}")
    rows = getattr(stream, "micro_batch_rows", None)
    if rows is not None and rows != controller.micro_batch_rows:
        raise ConfigError(f"controller micro_batch_rows ({controller.micro_batch_rows}) differs "
                          f"from the stream's ({rows}); build both with the same value")


class _Loop:
    """The state of one `train` call (split out so each piece stays short)."""

    def __init__(self, stream: Iterable[dict[str, Any]], cfg: TrainConfig, state: TrainState,
                 device: torch.device, controller: BatchSizeController | None,
                 batch_filter: BatchFilter | None, log_every: int) -> None:
        self.it: Iterator[dict[str, Any]] = iter(stream)
        self.cfg, self.state, self.device = cfg, state, device
        self.controller, self.filter, self.log_every = controller, batch_filter, log_every
        attach = getattr(batch_filter, "attach", None)
        if callable(attach):  # CoLM reads the optimizer's Adam moments for its features
            attach(state.optimizer)
        bf16 = device.type == "cuda" and cfg.bf16
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else (
            contextlib.nullcontext)
        self.curves: list[dict[str, Any]] = []
        self.eval_curves: list[dict[str, Any]] = []
        self.tokens_read = self.micro_batches = 0
        self.window = [0.0, 0, 0]  # loss sum, label tokens, steps since the last log
        self.ended = False
        self._last: dict[str, Any] = {}
        self._last_eval: tuple[float | None, dict[str, float], dict[str, int]] = (None, {}, {})

    def run(self, stop: int, eval_batches: EvalBatches | None, progress: bool) -> TrainResult:
        start, state = time.perf_counter(), self.state
        every = self.cfg.eval_every_tokens
        next_eval = (state.tokens // every + 1) * every if every else None
        state.model.train()
        with _progress(progress, stop - state.tokens) as advance:
            while state.tokens < stop and not self.ended:
                before = state.tokens
                self._step(stop)
                advance(state.tokens - before)
                if next_eval is not None and eval_batches is not None and \
                        state.tokens >= next_eval:
                    self._evaluate(eval_batches)
                    next_eval = (state.tokens // every + 1) * every
        self._flush()
        if eval_batches is not None and not (self.eval_curves and
                                             self.eval_curves[-1]["tokens"] == state.tokens):
            self._evaluate(eval_batches)
        final = self._last_eval
        return TrainResult(self.curves, self.eval_curves, final[0], final[1], final[2],
                           state.tokens, self.tokens_read, state.steps, self.micro_batches,
                           time.perf_counter() - start, self.ended, state)

    def _draw(self, count: int) -> list[dict[str, Any]]:
        drawn = []
        for _ in range(count):
            batch = next(self.it, None)
            if batch is None:
                self.ended = True
                break
            batch = check_batch(batch)
            self.tokens_read += real_tokens(batch)
            drawn.append(to_device(batch, self.device))
        return drawn

    def _step(self, stop: int) -> None:
        ctl, state = self.controller, self.state
        plan = ctl.plan() if ctl is not None else Plan(0, 1, 1.0, measure=False)
        group = self.filter.group_size if self.filter is not None else 1
        batches = self._draw(plan.accum_steps * group)
        if self.filter is not None and batches:
            with self.autocast():
                batches = self.filter(state.model, batches)
        batches = fit_budget(batches, stop - state.tokens)
        step_tokens = sum(real_tokens(b) for b in batches)
        if step_tokens == 0:
            return  # all padding (a rank's top-up batch) or nothing left: no step
        mult = plan.lr_multiplier
        lr = self.cfg.lr * lr_factor(state.tokens + step_tokens, self.cfg) * mult
        for group_ in state.optimizer.param_groups:
            group_["lr"] = lr
        measure = plan.measure and not isinstance(ctl, ScheduleController)
        loss_sum, labels, stats = accumulate(state.model, batches, autocast=self.autocast(),
                                             grad_chunks=self.cfg.grad_chunks if measure
                                             else None)
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), self.cfg.grad_clip)
        state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.tokens += step_tokens
        state.steps += 1
        self.micro_batches += len(batches)
        rows = sum(int(b["input_ids"].shape[0]) for b in batches)
        if ctl is not None:
            _observe(ctl, step_tokens, rows, stats)
        self._log(loss_sum, labels, lr, rows, plan)

    def _log(self, loss_sum: float, labels: int, lr: float, rows: int, plan: Plan) -> None:
        self.window = [self.window[0] + loss_sum, self.window[1] + labels, self.window[2] + 1]
        self._last = {"lr": lr, "batch_rows": rows, "accum_steps": plan.accum_steps,
                      "lr_multiplier": plan.lr_multiplier}
        if self.window[2] >= self.log_every:
            self._flush()

    def _flush(self) -> None:
        loss, labels, steps = self.window
        if not steps:
            return
        state = self.state
        self.curves.append({"tokens": state.tokens, "tokens_read": self.tokens_read,
                            "step": state.steps, "train_loss": loss / labels if labels else
                            float("nan"), **self._last})
        log.info("step %d, %d tokens: train loss %.4f, lr %.2e, batch %d rows", state.steps,
                 state.tokens, self.curves[-1]["train_loss"], self._last["lr"],
                 self._last["batch_rows"])
        self.window = [0.0, 0, 0]

    def _evaluate(self, eval_batches: EvalBatches) -> None:
        source = eval_batches() if callable(eval_batches) else eval_batches
        if isinstance(source, dict):
            source = [b for batches in source.values() for b in batches]
        totals = evaluate_totals(self.state.model, source, autocast=self.autocast())
        self.state.model.train()
        losses = {d: loss / n for d, (loss, n) in totals.items()}
        tokens = {d: n for d, (_, n) in totals.items()}
        count = sum(tokens.values())
        overall = sum(loss for loss, _ in totals.values()) / count if count else None
        self.eval_curves.append({"tokens": self.state.tokens, "step": self.state.steps,
                                 "eval_loss": overall,
                                 **{f"eval_loss_{d}": v for d, v in losses.items()}})
        self._last_eval = (overall, losses, tokens)
        log.info("eval at %d tokens: %s", self.state.tokens, losses)


def _observe(ctl: BatchSizeController, tokens: int, rows: int, stats: GradStats | None) -> None:
    if isinstance(ctl, ScheduleController):
        ctl.observe(tokens=tokens)
        return
    if stats is not None and len(stats.chunk_sq_norms) < 2:
        raise ConfigError("gradient statistics need >= 2 row chunks per step; use "
                          "micro_batch_rows >= 2 or a controller start_batch of >= 2 "
                          "micro-batches")
    if isinstance(ctl, NormTestController):
        if stats is None:
            ctl.observe()
        else:
            ctl.observe(grad_sq_norms=stats.chunk_sq_norms,
                        mean_grad_sq_norm=stats.step_sq_norm,
                        rows_per_sample=stats.rows_per_chunk)
    elif stats is None:
        ctl.observe()
    else:
        ctl.observe(small_sq_norm=stats.chunk_sq_norms, big_sq_norm=stats.step_sq_norm,
                    small_batch=stats.rows_per_chunk, big_batch=rows)


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _progress(show: bool, total: int) -> Iterator[Callable[[int], None]]:
    if not show:
        yield lambda n: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("training (tokens)", total=total)
        yield lambda n: bar.advance(task, n)
