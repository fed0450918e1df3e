"""`ingest`: read JSONL / Parquet / CSV / HF datasets / text folders into a corpus store.

Streaming end to end: one input block at a time is parsed, checked, normalized and appended
to Parquet shards inside a temporary sibling directory, which is renamed into place only after
the manifest is written. Memory is bounded whatever the input size: peak RSS stayed at
~330 MiB for 0.25, 1 and 2 GB of JSONL (8 MB blocks; benchmarks/RESULTS.md), plus 20 bytes per
row for the duplicate check when ids come from the input.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from gristmill.errors import ConfigError, CorruptStoreError, InputError
from gristmill.storage.atomic import atomic_directory
from gristmill.storage.corpus import CorpusStore
from gristmill.storage.normalize import FieldMap, Normalizer
from gristmill.storage.schema import (
    DOMAIN,
    FORMAT_VERSION,
    ID,
    MANIFEST_NAME,
    N_CHARS,
    TEXT,
    fingerprint,
    gristmill_version,
    now_iso,
    write_json,
)
from gristmill.storage.sources import Chunk, ReadOptions, Source, discover_sources, read_source
from gristmill.storage.writer import COMPRESSION_LEVEL, ROW_GROUP_ROWS, SHARD_BYTES, ShardWriter

log = logging.getLogger(__name__)


class _DuplicateIds:
    """Finds repeated input ids with 64-bit hashes kept per row, checked once at the end."""

    def __init__(self) -> None:
        self.hashes: list[np.ndarray] = []
        self.where: list[tuple[Source, np.ndarray]] = []

    def add(self, ids: pa.Array, source: Source, positions: np.ndarray) -> None:
        self.hashes.append(pl.Series(ids).hash(seed=0).to_numpy())
        self.where.append((source, positions))

    def check(self, out_dir: Path, shards: list[dict[str, Any]]) -> None:
        if not self.hashes:
            return
        hashes = np.concatenate(self.hashes)
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        same = np.flatnonzero(ordered[1:] == ordered[:-1])
        if not len(same):
            return
        ids = pq.ParquetDataset([out_dir / s["path"] for s in shards]).read([ID]).column(ID)
        for k in same:  # confirm on the strings: two different ids may share a hash
            first, second = int(order[k]), int(order[k + 1])
            value = ids[first].as_py()
            if value == ids[second].as_py():
                raise InputError(
                    f"duplicate id {value!r} at {self._locate(first)} and "
                    f"{self._locate(second)}; ids must be unique: de-duplicate the input or drop "
                    "--id-field so gristmill generates ids"
                )

    def _locate(self, row: int) -> str:
        for source, positions in self.where:
            if row < len(positions):
                return source.where(int(positions[row]))
            row -= len(positions)
        raise AssertionError("row outside the ingested range")


def _domain_stats(table: pa.Table, totals: dict[str, dict[str, int]]) -> None:
    stats = pa.table({
        "domain": table.column(DOMAIN).cast(pa.string()),
        "bytes": pc.binary_length(table.column(TEXT)),
        "chars": table.column(N_CHARS),
    }).group_by("domain").aggregate([("bytes", "count"), ("bytes", "sum"), ("chars", "sum")])
    for row in stats.to_pylist():
        entry = totals[row["domain"]]
        entry["rows"] += row["bytes_count"]
        entry["bytes"] += row["bytes_sum"]
        entry["chars"] += row["chars_sum"]


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]ingest[/] {task.description}"), BarColumn(), DownloadColumn(),
        TextColumn("{task.fields[rows]:,} docs"), TimeRemainingColumn(), disable=not enabled,
    )


def ingest(
    sources: Sequence[Any],
    out: str | Path,
    *,
    text_field: str = "text",
    domain_field: str | None = None,
    domain: str | None = None,
    id_field: str | None = None,
    keep_empty: bool = False,
    skip_bad_records: bool = False,
    overwrite: bool = False,
    rows_per_shard: int | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
    shard_bytes: int = SHARD_BYTES,
    progress: bool = False,
    reuse: bool = False,
    compression_level: int = COMPRESSION_LEVEL,
) -> CorpusStore:
    """Ingest files, folders or `datasets.Dataset` objects into a corpus store at `out`.

    Args:
        sources: paths (JSONL plain/.gz/.zst, Parquet, CSV, `save_to_disk` folders, folders of
            text files whose sub-folders are domains), globs, or `datasets.Dataset` objects.
        out: the store directory; refused if it exists unless `overwrite`.
        text_field: input field holding the document text.
        domain_field: input field holding the domain; else `domain`; else the sub-folder
            (text folders) or the file's stem.
        id_field: input field holding unique ids; else a hash of source path and position.
        keep_empty: keep empty / whitespace-only documents (dropped and counted by default).
        skip_bad_records: count and skip bad lines, records and unreadable files.
        rows_per_shard: cap rows per shard (small shards for tests).
        compression_level: zstd level of the shards (1: fastest; higher: smaller, slower).
        reuse: if `out` is a valid store made from the same inputs (names, sizes, modification
            times) and settings, return it unchanged instead of refusing or rewriting it.

    Returns:
        The opened `CorpusStore`.

    Example:
        >>> store = ingest(["data/demo"], "out/corpus", domain_field="domain",
        ...                id_field="id")  # doctest: +SKIP
    """
    if domain_field is not None and domain is not None:
        raise ConfigError("pass either --domain-field or --domain, not both")
    if rows_per_shard is not None and rows_per_shard < 1:
        raise ConfigError(f"`rows_per_shard` must be >= 1, got {rows_per_shard}")
    out = Path(out)
    found = discover_sources(list(sources))
    fields = FieldMap(text_field, id_field, domain_field, domain, keep_empty, skip_bad_records)
    inputs = _inputs_fingerprint(found, fields, rows_per_shard)
    if reuse and (out / MANIFEST_NAME).is_file():
        try:
            existing = CorpusStore.open(out)
        except CorruptStoreError as exc:
            log.warning("rebuilding %s: %s", out, exc)
        else:
            if existing.manifest.get("inputs_fingerprint") == inputs:
                log.info("%s is up to date", out)
                return existing
        overwrite = True
    with atomic_directory(out, overwrite=overwrite) as tmp:
        writer_args = (rows_per_shard, shard_bytes, row_group_rows, compression_level)
        manifest = _ingest_into(tmp, found, fields, rows_per_shard, writer_args, progress)
        write_json(tmp / MANIFEST_NAME, manifest)
    log.info("ingested %d documents into %s", manifest["rows"], out)
    return CorpusStore.open(out)


class _IngestRun:
    """The state of one ingest: normalizer, shard writer, duplicate check, per-domain totals."""

    def __init__(self, tmp: Path, fields: FieldMap, writer_args: tuple[Any, ...]) -> None:
        self.tmp = tmp
        self.normalizer = Normalizer(fields)
        self.writer_args = writer_args
        self.writer: ShardWriter | None = None
        self.dupes = _DuplicateIds()
        self.totals: dict[str, dict[str, int]] = defaultdict(
            lambda: {"rows": 0, "bytes": 0, "chars": 0})

    @property
    def rows(self) -> int:
        return sum(t["rows"] for t in self.totals.values())

    def add(self, chunk: Chunk) -> None:
        """Normalize one chunk, queue it for writing and count it."""
        chunk.source.stats["records"] += chunk.table.num_rows
        if chunk.table.num_rows == 0:  # every line of the block was bad and skipped
            return
        table, positions, ids_from_input = self.normalizer(chunk)
        if ids_from_input:
            self.dupes.add(table.column(ID).combine_chunks(), chunk.source, positions)
        if self.writer is None:
            assert self.normalizer.schema is not None
            self.writer = ShardWriter(self.tmp, self.normalizer.schema, *self.writer_args)
        self.writer.write(table)
        _domain_stats(table, self.totals)
        chunk.source.stats["rows"] = chunk.source.stats.get("rows", 0) + table.num_rows

    def finish(self) -> list[dict[str, Any]]:
        """Close the shards; refuse an empty result and duplicate input ids."""
        shards = self.writer.close() if self.writer is not None else []
        if not shards:
            empty = self.normalizer.empty_dropped
            dropped = f" ({empty} empty documents dropped)" if empty else ""
            raise InputError(f"no documents found in the input{dropped}; check the paths and "
                             "--text-field" + (", or pass --keep-empty" if empty else ""))
        self.dupes.check(self.tmp, shards)
        return shards

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()  # drain the I/O thread before the temporary directory goes


def _ingest_into(
    tmp: Path,
    found: list[Source],
    fields: FieldMap,
    rows_per_shard: int | None,
    writer_args: tuple[Any, ...],
    progress: bool,
) -> dict[str, Any]:
    run = _IngestRun(tmp, fields, writer_args)
    opts = ReadOptions(fields.text_field, fields.skip_bad_records)
    try:
        with _progress(progress) as bar:
            task = bar.add_task("", total=sum(s.size for s in found) or None, rows=0)
            for source in found:
                bar.update(task, description=source.key)
                advanced = 0
                for chunk in read_source(source, opts):
                    step = min(chunk.bytes_read, max(source.size - advanced, 0))
                    advanced += step
                    run.add(chunk)
                    bar.update(task, advance=step, rows=run.rows)
                bar.update(task, advance=max(source.size - advanced, 0))
        shards = run.finish()
    except BaseException:
        run.abort()
        raise
    return _manifest(found, fields, shards, run.totals, run.normalizer, rows_per_shard)


def _inputs_fingerprint(
    found: list[Source], fields: FieldMap, rows_per_shard: int | None
) -> str:
    """What the store was made from: input names, sizes and modification times, and settings."""
    parts = [f"{s.key}:{s.size}:{s.path.stat().st_mtime_ns if s.path else ''}" for s in found]
    return fingerprint([*parts, repr(sorted(vars(fields).items())), repr(rows_per_shard)])


def _manifest(
    found: list[Source],
    fields: FieldMap,
    shards: list[dict[str, Any]],
    totals: dict[str, dict[str, int]],
    normalizer: Normalizer,
    rows_per_shard: int | None,
) -> dict[str, Any]:
    assert normalizer.schema is not None
    return {
        "kind": "corpus",
        "format_version": FORMAT_VERSION,
        "gristmill_version": gristmill_version(),
        "created_at": now_iso(),
        "rows": sum(s["rows"] for s in shards),
        "bytes": sum(t["bytes"] for t in totals.values()),
        "chars": sum(t["chars"] for t in totals.values()),
        "domains": {name: totals[name] for name in sorted(totals)},
        "fingerprint": fingerprint([f"{s['path']}:{s['sha256']}" for s in shards]),
        "inputs_fingerprint": _inputs_fingerprint(found, fields, rows_per_shard),
        "schema": [{"name": f.name, "type": str(f.type)} for f in normalizer.schema],
        "params": {**vars(fields), "rows_per_shard": rows_per_shard},
        "dropped": {"empty": normalizer.empty_dropped,
                    "bad_records": sum(s.stats["bad_records"] for s in found),
                    "bad_files": sum(s.stats.get("bad_files", 0) for s in found)},
        "dropped_columns": normalizer.dropped_columns,
        "sources": [{"key": s.key, "kind": s.kind, "path": str(s.path) if s.path else None,
                     "bytes": s.size, **s.stats} for s in found],
        "shards": shards,
    }
