"""Proxy-model training for selection ablations: a small transformer and its training loop.

`ProxyLM` (model.py) is a decoder-only transformer in plain PyTorch whose attention stays
inside each packed document; `train` (trainer.py) runs AdamW with a cosine or WSD schedule by
tokens over `GristmillStream` micro-batches, with optional batch-size controllers
(`gristmill.samplers.controllers`) and online batch filters (`hard_batch`), and reports train
loss, held-out loss per domain (`evaluate`), tokens, steps, effective batch and LR multiplier.
It is also the reference example of the stream in a training loop. This package may import
every earlier stage (storage -> embed -> selectors -> packing -> samplers -> train).
"""

from gristmill.train.config import TrainConfig, lr_factor
from gristmill.train.evaluation import evaluate, evaluate_totals
from gristmill.train.filters import BatchFilter, HardBatchFilter, hard_batch
from gristmill.train.model import ProxyConfig, ProxyLM, ProxyOutput, token_losses
from gristmill.train.steps import accumulate
from gristmill.train.trainer import TrainResult, TrainState, train

__all__ = [
    "BatchFilter",
    "HardBatchFilter",
    "ProxyConfig",
    "ProxyLM",
    "ProxyOutput",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "accumulate",
    "evaluate",
    "evaluate_totals",
    "hard_batch",
    "lr_factor",
    "token_losses",
    "train",
]
