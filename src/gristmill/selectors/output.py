"""Publish a selection store: kept rows, dropped rows with reasons, stats, plot, manifest.

Layout (DESIGN.md, Data contracts: Selection manifest):

    SEL/manifest.json              selector, parameters, budget, seed, input fingerprints, lineage
    SEL/part-00000.parquet         one row per selected document: id, row, weight, selector,
                                   score, cluster (-1 without clusters), sorted by row
    SEL/_dropped/part-00000.parquet  pool rows not kept: id, row, reason, score, cluster
                                   (semdedup adds related_row, related_id: what it duplicates)
    SEL/_stats/stats.json          the method's statistics and the per-domain table
    SEL/_stats/by_domain.png       rows per domain, pool vs selection

Written through `atomic_directory`: a failure leaves no partial store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gristmill.plots import plot_selection_by_domain
from gristmill.selectors.pool import Pool
from gristmill.selectors.result import SelectionResult
from gristmill.storage.atomic import atomic_directory
from gristmill.storage.corpus import CorpusStore
from gristmill.storage.schema import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    STATS_DIR,
    fingerprint,
    gristmill_version,
    now_iso,
    write_json,
)

DATA_FILE = "part-00000.parquet"
DROPPED_DIR = "_dropped"


@dataclass(frozen=True)
class WrittenSelection:
    """Where a selection went and what it holds."""

    path: Path
    manifest: dict[str, Any]
    status: str = "written"

    @property
    def by_domain(self) -> list[dict[str, Any]]:
        return list(self.manifest["by_domain"])


def write_selection(out: str | Path, pool: Pool, result: SelectionResult, *, method: str,
                    budget: str | None, seed: int, overwrite: bool = False,
                    extra_inputs: dict[str, Any] | None = None,
                    attach: dict[str, Path] | None = None,
                    request_key: str | None = None) -> WrittenSelection:
    """Write `result` (pool positions) as the selection store `out`.

    Args:
        out: the selection directory to create.
        pool: the pool the selector ran on (must come from `load_pool`: ids come from its
            corpus).
        result: the selector's answer.
        method: the registry name, written to the `selector` column and the manifest.
        budget: the budget as the user gave it (None for a filter run without one).
        seed: the seed the selector used.
        extra_inputs: further inputs to record (e.g. the target set's path and fingerprint).
        attach: directories moved into the store before it is published (name -> path), e.g.
            `_clusters` computed on the fly.
    """
    assert pool.corpus is not None, "write_selection needs a pool from load_pool"
    kept_rows = pool.rows[result.selected]
    dropped = np.setdiff1d(np.arange(pool.size), result.selected, assume_unique=True)
    by_domain = _by_domain(pool, result.selected)
    manifest = _jsonable(_manifest(pool, result, method, budget, seed, kept_rows, by_domain,
                                   extra_inputs or {}))
    manifest["request_key"] = request_key
    with atomic_directory(Path(out), overwrite=overwrite) as tmp:
        ids = _take_ids(pool.corpus, pool.rows)
        pq.write_table(_kept_table(pool, result, method, kept_rows, ids), tmp / DATA_FILE,
                       compression="zstd")
        (tmp / DROPPED_DIR).mkdir()
        pq.write_table(_dropped_table(pool, result, dropped, ids),
                       tmp / DROPPED_DIR / DATA_FILE, compression="zstd")
        (tmp / STATS_DIR).mkdir()
        write_json(tmp / STATS_DIR / "stats.json", {"stats": manifest["stats"],
                                                    "by_domain": by_domain})
        plot_selection_by_domain([d["domain"] for d in by_domain],
                                 [d["pool"] for d in by_domain],
                                 [d["selected"] for d in by_domain],
                                 tmp / STATS_DIR / "by_domain.png",
                                 title=f"{method}: {len(kept_rows):,} of {pool.size:,} rows")
        for name, path in (attach or {}).items():
            Path(path).rename(tmp / name)
        write_json(tmp / MANIFEST_NAME, manifest)
    return WrittenSelection(Path(out), manifest)


def _take_ids(corpus: CorpusStore, rows: np.ndarray) -> np.ndarray:
    """The `id` of each global row in `rows` (sorted), read shard by shard."""
    parts = []
    for shard in corpus.shards:
        lo, hi = np.searchsorted(rows, [shard.offset, shard.offset + shard.rows])
        if hi > lo:
            column = pq.read_table(shard.path, columns=["id"]).column("id")
            parts.append(column.take(pa.array(rows[lo:hi] - shard.offset)).to_numpy(
                zero_copy_only=False))
    return np.concatenate(parts) if parts else np.empty(0, dtype=object)


def _cluster_of(pool: Pool, positions: np.ndarray) -> np.ndarray:
    if pool.labels is None:
        return np.full(len(positions), -1, dtype=np.int32)
    return pool.labels[positions].astype(np.int32)


def _kept_table(pool: Pool, result: SelectionResult, method: str, kept_rows: np.ndarray,
                ids: np.ndarray) -> pa.Table:
    return pa.table({
        "id": pa.array(ids[result.selected], pa.string()),
        "row": pa.array(kept_rows, pa.int64()),
        "weight": pa.array(result.weights, pa.float32()),
        "selector": pa.DictionaryArray.from_arrays(np.zeros(len(kept_rows), np.int32), [method]),
        "score": pa.array(result.scores[result.selected], pa.float32()),
        "cluster": pa.array(_cluster_of(pool, result.selected), pa.int32()),
    })


def _dropped_table(pool: Pool, result: SelectionResult, dropped: np.ndarray,
                   ids: np.ndarray) -> pa.Table:
    columns = {
        "id": pa.array(ids[dropped], pa.string()),
        "row": pa.array(pool.rows[dropped], pa.int64()),
        "reason": pa.DictionaryArray.from_arrays(np.zeros(len(dropped), np.int32),
                                                 [result.reason]),
        "score": pa.array(result.scores[dropped], pa.float32()),
        "cluster": pa.array(_cluster_of(pool, dropped), pa.int32()),
    }
    if result.related is not None:
        # semdedup: the kept-or-earlier row each dropped row is a near-duplicate of.
        related = result.related[dropped]
        known = related >= 0
        columns["related_row"] = pa.array(np.where(known, pool.rows[np.maximum(related, 0)],
                                                   -1), pa.int64())
        columns["related_id"] = pa.array(np.where(known, ids[np.maximum(related, 0)], None),
                                         pa.string())
    return pa.table(columns)


def _by_domain(pool: Pool, selected: np.ndarray) -> list[dict[str, Any]]:
    k = len(pool.domain_names)
    before = np.bincount(pool.domains, minlength=k)
    after = np.bincount(pool.domains[selected], minlength=k)
    return [{"domain": name, "pool": int(b), "selected": int(a),
             "kept_fraction": round(float(a) / b, 4) if b else 0.0}
            for name, b, a in zip(pool.domain_names, before, after, strict=True) if b]


def _jsonable(value: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays, paths and tuples (recursively)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _manifest(pool: Pool, result: SelectionResult, method: str, budget: str | None, seed: int,
              kept_rows: np.ndarray, by_domain: list[dict[str, Any]],
              extra_inputs: dict[str, Any]) -> dict[str, Any]:
    corpus, emb, clusters, source = pool.corpus, pool.embeddings, pool.clusters, pool.source
    assert corpus is not None
    step = {"selector": method, "params": result.params, "budget": budget, "seed": seed,
            "pool_rows": pool.size, "rows": len(kept_rows)}
    lineage = list(source.manifest.get("lineage", [])) if source is not None else []
    rows_digest = fingerprint([kept_rows.tobytes().hex()])
    return {
        "kind": "selection", "format_version": FORMAT_VERSION,
        "gristmill_version": gristmill_version(), "created": now_iso(),
        "selector": method, "params": result.params, "seed": seed,
        "budget": {"spec": budget, "rows": len(kept_rows) if budget is not None else None},
        "rows": len(kept_rows), "dropped": pool.size - len(kept_rows),
        "reason": result.reason,
        "corpus_fingerprint": corpus.fingerprint,
        "corpus": {"path": str(corpus.path), "fingerprint": corpus.fingerprint,
                   "rows": corpus.num_rows},
        "embeddings": None if emb is None else {
            "path": str(emb.path), "fingerprint": emb.manifest.get("fingerprint"),
            "model": emb.manifest.get("model"), "normalized": emb.normalized},
        "clusters": None if clusters is None else {
            "path": str(clusters.path), "fingerprint": clusters.fingerprint, "k": clusters.k,
            "spherical": clusters.spherical, "dist": clusters.dist_metric},
        "pool": {"rows": pool.size, "selection": None if source is None else {
            "path": str(source.path), "fingerprint": source.fingerprint,
            "selector": source.manifest.get("selector")}},
        "inputs": extra_inputs,
        "lineage": [*lineage, step],
        "by_domain": by_domain,
        "stats": result.stats,
        "fingerprint": fingerprint([method, repr(sorted(result.params.items())), str(seed),
                                    corpus.fingerprint, rows_digest]),
        "files": {"selected": DATA_FILE, "dropped": f"{DROPPED_DIR}/{DATA_FILE}",
                  "stats": f"{STATS_DIR}/stats.json", "plot": f"{STATS_DIR}/by_domain.png"},
    }
