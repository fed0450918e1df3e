"""What a selector returns: the kept pool positions, a score per pool row, why others went."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Reason codes for dropped rows: stable snake_case, written to `SEL/_dropped/` (STYLE.md 7).
REASONS = {
    "near_duplicate": "semdedup: cosine > 1 - eps to an earlier item of its cluster",
    "prototypical": "ssp/dbp: closer to its centroid than the rows its cluster kept",
    "over_quota": "kmq: its cluster's quota was filled by other draws",
    "not_sampled": "random: not drawn",
    "covered": "kcenter/facility-location: close to a chosen centre",
    "off_target": "rds/dsir: less similar to the target than the rows kept",
}


@dataclass
class SelectionResult:
    """A selector's answer, in pool positions (0 .. pool size - 1).

    Attributes:
        selected: (m,) int64 sorted unique pool positions kept.
        scores: (n,) float32 method score of every pool row (NaN where it has none); the
            selection store writes it for kept rows and for dropped ones.
        reason: the reason code of every dropped row (a key of `REASONS`).
        weights: (m,) float32 sampling multiplicity of each kept row (None: all 1).
        stats: method statistics (per-cluster quotas, eps found...), written to the manifest.
        params: the parameters as resolved (defaults filled in, eps found by search...).
        related: (n,) int64 pool position of the row each row relates to (semdedup: the
            earlier near-duplicate; -1: none), written for dropped rows; None when unused.
    """

    selected: np.ndarray
    scores: np.ndarray
    reason: str
    weights: np.ndarray | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    related: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.selected = np.asarray(self.selected, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        if self.weights is None:
            self.weights = np.ones(len(self.selected), dtype=np.float32)
        self.weights = np.asarray(self.weights, dtype=np.float32)
        assert self.reason in REASONS, self.reason
        assert len(self.weights) == len(self.selected)
