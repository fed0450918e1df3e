"""Write normalized corpus tables into Parquet shards with fixed-size row groups.

Row groups of `row_group_rows` (~10k) are the unit later stages read, so the writer buffers
chunks until a full group is ready instead of writing whatever size a reader produced. Shards
roll over at `rows_per_shard` rows or `shard_bytes` of text, whichever comes first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gristmill.storage.schema import file_sha256

SHARD_BYTES = 256 << 20
ROW_GROUP_ROWS = 10_000


@dataclass
class ShardWriter:
    """Appends tables (all with one schema) to `part-NNNNN.parquet` files under `directory`."""

    directory: Path
    schema: pa.Schema
    rows_per_shard: int | None = None
    shard_bytes: int = SHARD_BYTES
    row_group_rows: int = ROW_GROUP_ROWS
    shards: list[dict[str, Any]] = field(default_factory=list)
    _pending: list[pa.Table] = field(default_factory=list)
    _pending_rows: int = 0
    _writer: pq.ParquetWriter | None = None
    _rows: int = 0
    _bytes: int = 0

    def write(self, table: pa.Table) -> None:
        """Queue `table`; flush full row groups."""
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self._group_target():
            self._flush(self._group_target())

    def close(self) -> list[dict[str, Any]]:
        """Flush what is left and close the last shard; returns the shard records."""
        while self._pending_rows:
            self._flush(min(self._pending_rows, self._group_target()))
        self._finish_shard()
        return self.shards

    def _group_target(self) -> int:
        """Rows for the next group: never past the shard's row limit."""
        target = self.row_group_rows
        if self.rows_per_shard:
            target = min(target, self.rows_per_shard - self._rows)
        return max(target, 1)

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self._pending)
        group, rest = table.slice(0, rows), table.slice(rows)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        if self._writer is None:
            self._open_shard()
        assert self._writer is not None
        self._writer.write_table(group.combine_chunks(), row_group_size=rows)
        self._rows += rows
        self._bytes += group.column("text").nbytes
        full_rows = self.rows_per_shard is not None and self._rows >= self.rows_per_shard
        if full_rows or self._bytes >= self.shard_bytes:
            self._finish_shard()

    def _open_shard(self) -> None:
        name = f"part-{len(self.shards):05d}.parquet"
        self._writer = pq.ParquetWriter(
            self.directory / name, self.schema, compression="zstd", compression_level=3,
            write_statistics=["id", "n_chars"],
        )
        self.shards.append({"path": name})

    def _finish_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        record = self.shards[-1]
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
        self._rows = self._bytes = 0
