"""Pooling: one (batch, tokens, hidden) tensor of hidden states -> one vector per document.

Every mode reads the attention mask, so a padded batch gives the same vectors as batch size 1
(ALGORITHMS.md 4.6: the RDS+ reference builds its weights over the padded width, which is only
right at batch size 1). Batches are right-padded: real tokens are positions 0..len-1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gristmill.errors import ConfigError

PoolFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens' states (sentence-transformers' `pooling_mode_mean_tokens`)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def cls(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The first token's state (BERT's [CLS])."""
    return hidden[:, 0]


def last(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last real token's state (decoder embedders such as E5-Mistral)."""
    last_index = mask.sum(1).clamp(min=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]


def weighted_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Position-weighted mean, w_t = t / sum(1..L) over real tokens only (SGPT; RDS+ 4.1).

    Later tokens weigh more, which suits causal LMs: their last states have seen the whole text.
    """
    positions = torch.cumsum(mask, dim=1) * mask  # 1..L on real tokens, 0 on padding
    weights = positions.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def max_tokens(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Element-wise max over real tokens (sentence-transformers' `pooling_mode_max_tokens`)."""
    masked = hidden.masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
    return masked.max(1).values


POOLINGS: dict[str, PoolFn] = {
    "mean": mean,
    "cls": cls,
    "last": last,
    "weighted-mean": weighted_mean,
    "max": max_tokens,
}


def pool(name: str, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pool `hidden` (b, t, h) under `mask` (b, t) with the named mode; returns (b, h) float32."""
    return get_pooling(name)(hidden.float(), mask)


def get_pooling(name: str) -> PoolFn:
    """The pooling function registered under `name`; lists the valid names otherwise."""
    try:
        return POOLINGS[name]
    except KeyError:
        raise ConfigError(
            f"--pooling {name!r} is not a pooling mode; choose one of {', '.join(POOLINGS)}"
        ) from None
