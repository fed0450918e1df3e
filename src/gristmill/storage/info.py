"""`summarize`: rows, bytes and characters per domain, and length percentiles (polars).

Counts come from the manifest (computed at ingest); percentiles scan only the small `domain`
and `n_chars` columns, so this stays cheap on large stores.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from gristmill.storage.corpus import CorpusStore

PERCENTILES = (5, 25, 50, 75, 95, 99)


def _percentiles(frame: pl.LazyFrame, by: str | None) -> pl.DataFrame:
    exprs = [pl.col("n_chars").quantile(p / 100, "nearest").alias(f"p{p}") for p in PERCENTILES]
    exprs += [pl.col("n_chars").max().alias("max"), pl.col("n_chars").mean().alias("mean")]
    if by is None:
        return frame.select(exprs).collect()
    return frame.group_by(by).agg(exprs).collect()


def summarize(store: CorpusStore, *, verify: bool = False) -> dict[str, Any]:
    """Summary of a store as plain data (what `gristmill info --json` prints).

    Args:
        store: an opened corpus store.
        verify: re-hash every shard against the manifest first (reads every byte).
    """
    if verify:
        store.verify()
    files = [str(s.path) for s in store.shards]
    frame = pl.scan_parquet(files).select(
        pl.col("domain").cast(pl.String), pl.col("n_chars")
    )
    overall = _percentiles(frame, None).to_dicts()[0]
    by_domain = {row.pop("domain"): row for row in _percentiles(frame, "domain").to_dicts()}
    domains = {
        name: {**counts, "n_chars": _round(by_domain.get(name, {}))}
        for name, counts in store.domains.items()
    }
    manifest = store.manifest
    return {
        "path": str(store.path),
        "rows": store.num_rows,
        "bytes": manifest["bytes"],
        "chars": manifest["chars"],
        "shards": len(store.shards),
        "disk_bytes": sum(s.bytes for s in store.shards),
        "fingerprint": store.fingerprint,
        "created_at": manifest["created_at"],
        "dropped": manifest["dropped"],
        "verified": verify,
        "n_chars": _round(overall),
        "domains": domains,
    }


def _round(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in stats.items()}
