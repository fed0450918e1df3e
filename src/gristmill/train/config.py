"""`TrainConfig` and the learning-rate schedule, indexed by tokens (ALGORITHMS.md 5.4).

Schedules are functions of tokens trained, not optimizer steps, so a run whose batch size
changes (an adaptive controller) or that drops batches (a filter) still warms up and decays
over the same data. "cosine" decays to `min_lr_ratio` after a linear warmup; "wsd"
(warmup-stable-decay) holds the peak and decays linearly over the last `decay_fraction` of
the budget, the shape to align with an end-of-training domain upsampling phase (6.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from gristmill.errors import ConfigError

SCHEDULES = ("cosine", "wsd")


@dataclass(frozen=True)
class TrainConfig:
    """How `train` optimises a proxy model.

    Attributes:
        max_tokens: real (non-padding) tokens to train on; also the schedule's horizon.
        lr: peak AdamW learning rate (multiplied by a batch-size controller's LR multiplier).
        weight_decay: AdamW decoupled weight decay on matrices (not on norms and biases).
        warmup: fraction of `max_tokens` over which the LR ramps linearly from 0.
        schedule: "cosine" or "wsd".
        decay_fraction: "wsd" only, fraction of `max_tokens` of the final linear decay.
        min_lr_ratio: the LR at the end of the decay, as a fraction of the peak.
        betas: AdamW betas.
        grad_clip: clip the global gradient norm to this (None: no clipping).
        eval_every_tokens: evaluate on the held-out batches every this many tokens (None:
            only at the end).
        seed: seeds initialisation and dropout (in a forked RNG: the global one is untouched).
        device: "auto" (CUDA when available), "cpu" or "cuda" (or "cuda:N").
        bf16: autocast to bfloat16 on CUDA (ignored on CPU).
        cpu_threads: torch intra-op threads while training on CPU (None: leave torch's
            setting); restored afterwards.
        grad_chunks: when a controller measures gradient statistics, each micro-batch is
            back-propagated in this many row chunks; the chunks are the samples of its norm
            test or noise-scale estimate (>= 2, so a single micro-batch gives a variance).
    """

    max_tokens: int
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: float = 0.05
    schedule: Literal["cosine", "wsd"] = "cosine"
    decay_fraction: float = 0.2
    min_lr_ratio: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    eval_every_tokens: int | None = None
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    cpu_threads: int | None = None
    grad_chunks: int = 2

    def __post_init__(self) -> None:
        _positive_int("max_tokens", self.max_tokens)
        if self.eval_every_tokens is not None:
            _positive_int("eval_every_tokens", self.eval_every_tokens)
        _positive_int("grad_chunks", self.grad_chunks, low=2)
        if self.cpu_threads is not None:
            _positive_int("cpu_threads", self.cpu_threads)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"TrainConfig `lr` must be a finite number > 0, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"TrainConfig `weight_decay` must be >= 0, got "
                              f"{self.weight_decay!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"TrainConfig `schedule` must be one of {list(SCHEDULES)}, got "
                              f"{self.schedule!r}")
        for name in ("warmup", "decay_fraction", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"TrainConfig `{name}` must be in [0, 1], got "
                                  f"{getattr(self, name)!r}")
        if self.schedule == "wsd" and self.warmup + self.decay_fraction > 1.0:
            raise ConfigError(f"TrainConfig `warmup` + `decay_fraction` must be <= 1 for "
                              f"'wsd', got {self.warmup} + {self.decay_fraction}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"TrainConfig `grad_clip` must be > 0 or None, got "
                              f"{self.grad_clip!r}")
        # The name only: a CUDA config may be written on a machine without CUDA.
        if self.device != "auto" and str(self.device).split(":")[0] not in ("cpu", "cuda"):
            raise ConfigError(f"TrainConfig `device` must be 'auto', 'cpu' or 'cuda', got "
                              f"{self.device!r}")


def lr_factor(tokens: float, config: TrainConfig) -> float:
    """The schedule's multiplier of the peak LR after `tokens` trained tokens, in [0, 1]."""
    total = config.max_tokens
    warm = config.warmup * total
    if tokens < warm:
        return tokens / warm
    low = config.min_lr_ratio
    if config.schedule == "cosine":
        done = min(max((tokens - warm) / max(total - warm, 1e-9), 0.0), 1.0)
        return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * done))
    decay_start = (1.0 - config.decay_fraction) * total
    if tokens <= decay_start:
        return 1.0
    done = min((tokens - decay_start) / max(total - decay_start, 1e-9), 1.0)
    return 1.0 - (1.0 - low) * done


def resolve_device(device: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; ConfigError for CUDA on a machine without it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"TrainConfig `device` must be 'auto', 'cpu' or 'cuda', got "
                          f"{device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("TrainConfig `device` is 'cuda' but CUDA is not available here; "
                          "use device='auto' or 'cpu'")
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"TrainConfig `device` must be 'auto', 'cpu' or 'cuda', got "
                          f"{device!r}")
    return resolved


def _positive_int(name: str, value: int, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"TrainConfig `{name}` must be an integer >= {low}, got {value!r}")
