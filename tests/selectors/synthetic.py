"""Synthetic embeddings for the selector tests: unit rows and Gaussian blobs (known answers).

A uniquely named module, so `from synthetic import blobs` never picks up another folder's
conftest.
"""

from __future__ import annotations

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def blobs(n_per: list[int], dim: int = 16, spread: list[float] | None = None,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around len(n_per) random unit centres; `spread` is each blob's noise."""
    rng = np.random.default_rng(seed)
    spread = spread or [0.2] * len(n_per)
    centres = unit(rng.normal(size=(len(n_per), dim)))
    parts, labels = [], []
    for c, (count, noise) in enumerate(zip(n_per, spread, strict=True)):
        parts.append(centres[c] + noise * rng.normal(size=(count, dim)) / np.sqrt(dim))
        labels.append(np.full(count, c))
    return unit(np.concatenate(parts)), np.concatenate(labels).astype(np.int32)
