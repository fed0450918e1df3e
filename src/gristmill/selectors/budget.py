"""Budgets: how many rows a selection keeps.

A budget written with a '.' is a fraction of the pool in (0, 1] (`0.3`, `1.0`); otherwise it is
a row count (`50000`). Resolving a budget against a pool gives the exact row count the
selection will hold; a count larger than the pool is an error rather than a silent cap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gristmill.errors import ConfigError


@dataclass(frozen=True)
class Budget:
    """A parsed budget: `fraction` in (0, 1] or `rows` >= 1 (exactly one is set)."""

    fraction: float | None = None
    rows: int | None = None

    def resolve(self, pool_rows: int) -> int:
        """The exact number of rows to keep from a pool of `pool_rows`."""
        if self.rows is not None:
            if self.rows > pool_rows:
                raise ConfigError(f"`budget` is {self.rows:,} rows but the pool holds only "
                                  f"{pool_rows:,}; lower it or pass a fraction such as 0.5")
            return self.rows
        assert self.fraction is not None
        if self.fraction == 1.0:
            return pool_rows
        # Round half up, but never to zero rows of a non-empty pool.
        return max(1, min(pool_rows, math.floor(self.fraction * pool_rows + 0.5)))

    def describe(self) -> str:
        return f"{self.fraction:g}" if self.fraction is not None else f"{self.rows}"


def parse_budget(spec: str | int | float) -> Budget:
    """`"0.3"` -> fraction 0.3, `"50000"` or `50000` -> 50,000 rows; anything else is refused.

    Example:
        >>> parse_budget("0.25").resolve(1000)
        250
        >>> parse_budget(64).resolve(1000)
        64
    """
    text = str(spec).strip()
    if isinstance(spec, float) or "." in text or "e" in text.lower():
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"`budget` must be a fraction in (0, 1] or a row count, got "
                              f"{text!r}") from None
        if not (0.0 < value <= 1.0) or math.isnan(value):
            raise ConfigError(f"`budget` fraction must be in (0, 1], got {text}; use a value "
                              "such as 0.3, or a whole row count without a '.'")
        return Budget(fraction=value)
    try:
        rows = int(text)
    except ValueError:
        raise ConfigError(f"`budget` must be a fraction in (0, 1] or a row count, got "
                          f"{text!r}") from None
    if rows < 1:
        raise ConfigError(f"`budget` must be at least 1 row, got {rows}")
    return Budget(rows=rows)
