"""Write normalized corpus tables into Parquet shards with fixed-size row groups.

Row groups of `row_group_rows` (~10k) are the unit later stages read, so the writer buffers
chunks until a full group is ready instead of writing whatever size a reader produced. Shards
roll over at `rows_per_shard` rows or `shard_bytes` of text, whichever comes first.

Compression and file I/O run on one background thread (pyarrow releases the GIL), at most
`_MAX_PENDING` tasks ahead, so zstd overlaps parsing: on 2 cores this took ingest of 1 GB of
JSONL from 10.3 s to 5.5 s (benchmarks/RESULTS.md). Shard boundaries are decided on the
caller's thread, so the output is the same as a sequential write.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gristmill.storage.schema import file_sha256

SHARD_BYTES = 256 << 20
ROW_GROUP_ROWS = 10_000
# zstd level 1 wrote 311 MB for 1 GB of demo JSONL vs 282 MB at level 3, and ingest ran
# 1.3x faster; datasets' Arrow cache holds 905 MB for the same rows.
COMPRESSION_LEVEL = 1
_MAX_PENDING = 2


class ShardWriter:
    """Appends tables (all with one schema) to `part-NNNNN.parquet` files under `directory`.

    Use as a context manager, or call `close()`; on an exception the background thread is
    drained and the open file closed, so the caller can delete the directory safely.
    """

    def __init__(
        self,
        directory: Path,
        schema: pa.Schema,
        rows_per_shard: int | None = None,
        shard_bytes: int = SHARD_BYTES,
        row_group_rows: int = ROW_GROUP_ROWS,
        compression_level: int = COMPRESSION_LEVEL,
    ) -> None:
        self.directory = directory
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.shard_bytes = shard_bytes
        self.row_group_rows = row_group_rows
        self.compression_level = compression_level
        self.shards: list[dict[str, Any]] = []
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._rows = 0  # rows in the open shard (caller's thread)
        self._bytes = 0
        self._open = False
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="gristmill-writer")
        self._inflight: deque[Future[None]] = deque()
        self._writer: pq.ParquetWriter | None = None  # owned by the background thread

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is not None:
            self.abort()

    def write(self, table: pa.Table) -> None:
        """Queue `table`; flush full row groups."""
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self._group_target():
            self._flush(self._group_target())

    def close(self) -> list[dict[str, Any]]:
        """Flush what is left, close the last shard, wait for the I/O; returns shard records."""
        while self._pending_rows:
            self._flush(min(self._pending_rows, self._group_target()))
        self._finish_shard()
        while self._inflight:
            self._inflight.popleft().result()
        self._pool.shutdown()
        return self.shards

    def abort(self) -> None:
        """Stop after an error: wait for queued I/O (ignoring its errors), close the file."""
        for future in self._inflight:
            future.exception()
        self._inflight.clear()
        self._pool.shutdown()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _group_target(self) -> int:
        """Rows for the next group: never past the shard's row limit."""
        target = self.row_group_rows
        if self.rows_per_shard:
            target = min(target, self.rows_per_shard - self._rows)
        return max(target, 1)

    def _submit(self, fn: Any, *args: Any) -> None:
        self._inflight.append(self._pool.submit(fn, *args))
        while len(self._inflight) > _MAX_PENDING:
            self._inflight.popleft().result()  # re-raises an I/O error here

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self._pending)
        group, rest = table.slice(0, rows), table.slice(rows)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        if not self._open:
            name = f"part-{len(self.shards):05d}.parquet"
            self.shards.append({"path": name})
            self._submit(self._io_open, self.directory / name)
            self._open = True
        self._submit(self._io_write, group.combine_chunks(), rows)
        self._rows += rows
        self._bytes += group.column("text").nbytes
        full_rows = self.rows_per_shard is not None and self._rows >= self.rows_per_shard
        if full_rows or self._bytes >= self.shard_bytes:
            self._finish_shard()

    def _finish_shard(self) -> None:
        if self._open:
            self._submit(self._io_finish, self.shards[-1])
            self._open = False
            self._rows = self._bytes = 0

    # Background thread --------------------------------------------------------------------

    def _io_open(self, path: Path) -> None:
        self._writer = pq.ParquetWriter(
            path, self.schema, compression="zstd", compression_level=self.compression_level,
            write_statistics=["id", "n_chars"],
        )

    def _io_write(self, group: pa.Table, rows: int) -> None:
        assert self._writer is not None
        self._writer.write_table(group, row_group_size=rows)

    def _io_finish(self, record: dict[str, Any]) -> None:
        assert self._writer is not None
        self._writer.close()
        self._writer = None
        path = self.directory / record["path"]
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        metadata = pq.read_metadata(path)
        record.update(
            rows=metadata.num_rows,
            row_groups=metadata.num_row_groups,
            bytes=path.stat().st_size,
            sha256=file_sha256(path),
        )
