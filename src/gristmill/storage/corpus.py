"""Open a corpus store and read it back, row-aligned by shard and row group.

Opening checks what is cheap at any scale: the manifest, each shard's size and its Parquet
footer (row count). `verify()` re-hashes every shard against the manifest's sha256.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from gristmill.errors import CorruptStoreError
from gristmill.storage.schema import file_sha256, read_manifest


@dataclass(frozen=True)
class Shard:
    """One data file: `rows` rows starting at global row `offset`."""

    path: Path
    rows: int
    row_groups: int
    offset: int
    bytes: int
    sha256: str


class CorpusStore:
    """A corpus store on disk (see DESIGN.md, Data contracts: Corpus).

    Example:
        >>> store = CorpusStore.open("out/corpus")       # doctest: +SKIP
        >>> for shard, start, batch in store.iter_batches(["id", "text"]):  # doctest: +SKIP
        ...     ...
    """

    def __init__(self, path: Path, manifest: dict[str, Any], shards: list[Shard]) -> None:
        self.path = path
        self.manifest = manifest
        self.shards = shards

    @classmethod
    def open(cls, path: str | Path) -> CorpusStore:
        """Open and check a store; raises CorruptStoreError naming the shard and the problem."""
        root = Path(path)
        manifest = read_manifest(root, "corpus")
        shards, offset = [], 0
        for record in manifest["shards"]:
            shard = _check_shard(root, record, offset)
            shards.append(shard)
            offset += shard.rows
        listed = {s.path.name for s in shards}
        strays = sorted(p.name for p in root.glob("*.parquet") if p.name not in listed)
        if strays:
            raise CorruptStoreError(
                f"{root / strays[0]}: shard not listed in the manifest; remove it or re-ingest"
            )
        if offset != manifest["rows"]:
            raise CorruptStoreError(
                f"{root}: shards hold {offset} rows but the manifest says {manifest['rows']}"
            )
        return cls(root, manifest, shards)

    @property
    def num_rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def fingerprint(self) -> str:
        """Content fingerprint (from shard checksums): what later stages record as input."""
        return str(self.manifest["fingerprint"])

    @property
    def domains(self) -> dict[str, dict[str, int]]:
        return dict(self.manifest["domains"])

    @property
    def schema(self) -> pa.Schema:
        return pq.read_schema(self.shards[0].path) if self.shards else pa.schema([])

    def verify(self) -> None:
        """Re-hash every shard against the manifest (reads every byte)."""
        for shard in self.shards:
            digest = file_sha256(shard.path)
            if digest != shard.sha256:
                raise CorruptStoreError(
                    f"{shard.path}: sha256 {digest[:12]}... does not match the manifest "
                    f"({shard.sha256[:12]}...); the shard changed after ingest: re-ingest"
                )

    def dataset(self) -> pads.Dataset:
        """A pyarrow dataset over exactly the listed shards."""
        return pads.dataset([str(s.path) for s in self.shards], format="parquet")

    def read_shard(self, index: int, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.shards[index].path, columns=columns)

    def read_row_group(
        self, shard: int, row_group: int, columns: list[str] | None = None
    ) -> pa.Table:
        return pq.ParquetFile(self.shards[shard].path).read_row_group(row_group, columns=columns)

    def iter_batches(
        self, columns: list[str] | None = None
    ) -> Iterator[tuple[int, int, pa.Table]]:
        """Yield `(shard index, first global row, table)` one row group at a time."""
        for index, shard in enumerate(self.shards):
            handle = pq.ParquetFile(shard.path)
            start = shard.offset
            for group in range(handle.num_row_groups):
                table = handle.read_row_group(group, columns=columns)
                yield index, start, table
                start += table.num_rows

    def read_column(self, name: str) -> np.ndarray:
        """One numeric column for the whole store, in row order (e.g. `n_chars`)."""
        return self.dataset().to_table(columns=[name]).column(name).to_numpy()


def _check_shard(root: Path, record: dict[str, Any], offset: int) -> Shard:
    path = root / record["path"]
    if not path.is_file():
        raise CorruptStoreError(f"{path}: shard listed in the manifest is missing; re-ingest")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise CorruptStoreError(
            f"{path}: {size} bytes on disk but {record['bytes']} in the manifest; "
            "the shard is truncated or was replaced: re-ingest"
        )
    try:
        metadata = pq.read_metadata(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptStoreError(f"{path}: unreadable Parquet footer ({exc}); re-ingest") from exc
    if metadata.num_rows != record["rows"]:
        raise CorruptStoreError(
            f"{path}: footer says {metadata.num_rows} rows, manifest says {record['rows']}"
        )
    return Shard(path, record["rows"], record["row_groups"], offset, size, record["sha256"])


def open_store(path: str | Path) -> CorpusStore:
    """Open a corpus store (alias of `CorpusStore.open`)."""
    return CorpusStore.open(path)
