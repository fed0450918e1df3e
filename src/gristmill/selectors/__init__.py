"""Stage 3: clustering and selection methods, one module each, one registry, one dispatcher.

`select(method, pool, budget, *, seed, **params)` runs any registered selector on a `Pool`
(every corpus row, or an earlier selection's rows: selections compose) and returns a
`SelectionResult`; `write_selection` publishes it as a selection store. `cluster_embeddings`
(FAISS k-means) writes the cluster store the cluster-based selectors read.

Registered selectors (ALGORITHMS.md has each method's specification):

- `random`: uniform without replacement; Gumbel-top-k when weighted (`score_column`).
- `semdedup`: per-cluster near-duplicate removal at cosine > 1 - eps (a filter: the budget is
  optional; with one, eps is found so exactly that many rows stay).
- `ssp`: self-supervised-prototype pruning, keeps the least prototypical rows per cluster.
- `dbp`: concept-complexity (density-based) pruning: softmax quotas over d_intra * d_inter.
- `kmq`: Diversify and Conquer's k-means-quality sampling; `IterativeRefiner` for the
  reward-guided rounds.
- `kcenter`: greedy k-center coreset.
- `facility-location`: lazy-greedy facility location on a sparse FAISS kNN graph (CRAIG).
- `rds`: target-aware RDS+: round-robin over target examples by cosine.
- `dsir`: distribution matching toward a target text set by hashed n-gram importance
  resampling.

RS2 (repeated random sampling, Okanovic et al. 2023) is not an offline selector: it draws a fresh
random subset of the pool every epoch, so it lives in the training stream (`gristmill.samplers`,
issue #5) as a sampler option rather than here.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from types import ModuleType
from typing import Any

import numpy as np

from gristmill.errors import ConfigError
from gristmill.selectors.budget import Budget, parse_budget
from gristmill.selectors.pool import Pool, load_pool
from gristmill.selectors.quota import allocate_quota
from gristmill.selectors.result import REASONS, SelectionResult

log = logging.getLogger(__name__)

#: Method name -> module in this package. Adding a selector: one module, one line here.
SELECTORS: dict[str, str] = {
    "random": "uniform",
    "semdedup": "semdedup",
    "ssp": "ssp",
    "dbp": "dbp",
    "kmq": "kmq",
    "kcenter": "kcenter",
    "facility-location": "facility_location",
    "rds": "rds",
    "dsir": "dsir",
}


def selector_module(method: str) -> ModuleType:
    """The module implementing `method`; unknown names list the registry."""
    if method not in SELECTORS:
        raise ConfigError(f"unknown selection method {method!r}; choose one of: "
                          f"{', '.join(SELECTORS)}")
    return importlib.import_module(f"gristmill.selectors.{SELECTORS[method]}")


def select(method: str, pool: Pool, budget: Budget | str | int | None, *, seed: int = 0,
           **params: Any) -> SelectionResult:
    """Run selector `method` on `pool` and check its answer.

    Args:
        method: a key of `SELECTORS`.
        pool: the rows to choose from (`load_pool` or `Pool.from_arrays`).
        budget: a fraction in (0, 1] (a string with '.', or a float), a row count, or None
            (filters only: keep every row the filter does not remove).
        seed: seeds every random choice.
        **params: method options; ones the method does not take are ignored (logged).

    Returns:
        The `SelectionResult`, in pool positions; exactly `budget` rows when one is given.

    Example:
        >>> result = select("random", Pool.from_arrays(np.eye(4)), "0.5", seed=0)
        >>> len(result.selected)
        2
    """
    module = selector_module(method)
    rows = _resolve_budget(method, module, budget, pool.size)
    accepted = inspect.signature(module.select).parameters
    used = {k: v for k, v in params.items() if k in accepted and v is not None}
    ignored = sorted(k for k, v in params.items() if k not in accepted and v is not None)
    if ignored:
        log.warning("%s ignores %s", method, ", ".join(ignored))
    if getattr(module, "NEEDS_CLUSTERS", False) and pool.labels is None:
        raise ConfigError(f"{method} needs clusters: pass --clusters CL (write them with "
                          "gristmill cluster EMB --k auto --out CL)")
    if getattr(module, "SPHERICAL_ONLY", False) and pool.labels is not None \
            and not pool.spherical:
        raise ConfigError(f"{method} needs spherical clusters (its distances assume unit "
                          "vectors); re-run gristmill cluster with --spherical")
    result = module.select(pool, rows, seed=seed, **used)
    _check_result(method, result, pool.size, rows)
    return result


def _resolve_budget(method: str, module: ModuleType, budget: Budget | str | int | None,
                    pool_rows: int) -> int | None:
    if budget is None:
        if getattr(module, "FILTER", False):
            return None
        raise ConfigError(f"{method} needs --budget (a fraction such as 0.3 or a row count)")
    parsed = budget if isinstance(budget, Budget) else parse_budget(budget)
    return parsed.resolve(pool_rows)


def _check_result(method: str, result: SelectionResult, n: int, rows: int | None) -> None:
    chosen = result.selected
    assert chosen.ndim == 1 and (len(chosen) == 0 or (chosen[0] >= 0 and chosen[-1] < n)), method
    assert np.all(np.diff(chosen) > 0), f"{method}: rows must be sorted and unique"
    assert len(result.scores) == n, f"{method}: one score per pool row"
    if rows is not None:
        assert len(chosen) == rows, f"{method}: {len(chosen)} rows for a budget of {rows}"


__all__ = [
    "REASONS",
    "SELECTORS",
    "Budget",
    "Pool",
    "SelectionResult",
    "allocate_quota",
    "load_pool",
    "parse_budget",
    "select",
    "selector_module",
]
