"""Read which corpus rows a selection holds (DESIGN.md, Data contracts: Selection manifest).

A selection is a directory with `manifest.json` (kind `selection`) and Parquet files with at
least a `row` column (global corpus row, int) and usually `id`, `weight`, `selector`, `score`.
Stages that work on a subset (`embed --selection`, a selector's `--pool`) read it here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gristmill.errors import CorruptStoreError, InputError
from gristmill.storage.schema import read_manifest


@dataclass(frozen=True)
class SelectedRows:
    """The sorted unique global rows a selection holds, and where they came from."""

    path: Path
    rows: np.ndarray  # (k,) int64, sorted, unique
    fingerprint: str
    manifest: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "fingerprint": self.fingerprint, "rows": len(self.rows)}


def read_selection(path: str | Path, *, corpus: Any | None = None) -> SelectedRows:
    """Read a selection's rows; check them against `corpus` (a CorpusStore) when given."""
    root = Path(path)
    manifest = read_manifest(root, "selection")
    files = sorted(root.glob("*.parquet"))
    if not files:
        raise CorruptStoreError(f"{root}: selection has no Parquet file")
    parts = []
    for file in files:
        try:
            table = pq.read_table(file, columns=["row"])
        except (pa.ArrowInvalid, KeyError, OSError) as exc:
            raise CorruptStoreError(f"{file}: cannot read a `row` column ({exc})") from exc
        parts.append(table.column("row").to_numpy().astype(np.int64))
    rows = np.unique(np.concatenate(parts))
    if corpus is not None:
        _check_against(root, manifest, rows, corpus)
    return SelectedRows(root, rows, str(manifest.get("fingerprint", "")), manifest)


def _check_against(root: Path, manifest: dict[str, Any], rows: np.ndarray, corpus: Any) -> None:
    expected = manifest.get("corpus_fingerprint")
    if expected is not None and expected != corpus.fingerprint:
        raise InputError(f"{root} selects rows of a corpus with fingerprint {expected}, but "
                         f"{corpus.path} has fingerprint {corpus.fingerprint}")
    if len(rows) and (rows[0] < 0 or rows[-1] >= corpus.num_rows):
        bad = int(rows[0] if rows[0] < 0 else rows[-1])
        raise InputError(f"{root}: row {bad} is outside {corpus.path} ({corpus.num_rows} rows)")
