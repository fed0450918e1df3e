"""Column names, Arrow types and manifest I/O shared by every store (one place, one version).

Every store is a directory holding data shards (`*.parquet` for the corpus) and a
`manifest.json`; anything else a stage writes (stats, plots) lives under `_`-prefixed folders
or has another extension, so `pyarrow.dataset.dataset(STORE, format="parquet",
exclude_invalid_files=True)` and `polars.scan_parquet(f"{STORE}/*.parquet")` see exactly the
data rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from gristmill.errors import CorruptStoreError

#: Bumped whenever a store's layout or manifest changes incompatibly.
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
STATS_DIR = "_stats"

ID, TEXT, DOMAIN, N_CHARS = "id", "text", "domain", "n_chars"
CORE_COLUMNS = (ID, TEXT, DOMAIN, N_CHARS)
CORE_TYPES: dict[str, pa.DataType] = {
    ID: pa.string(),
    TEXT: pa.large_string(),
    DOMAIN: pa.dictionary(pa.int32(), pa.string()),
    N_CHARS: pa.int32(),
}


def now_iso() -> str:
    """UTC time in ISO 8601, seconds precision, for manifests."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def gristmill_version() -> str:
    from gristmill import __version__

    return __version__


def fingerprint(parts: list[str]) -> str:
    """A stable content fingerprint (sha256 hex, 16 chars) of a list of strings."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in large blocks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON and fsync it, so a later rename publishes complete bytes."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_manifest(store: Path, kind: str) -> dict[str, Any]:
    """Read and check a store's manifest: it exists, parses, is of `kind` and of our version."""
    path = store / MANIFEST_NAME
    if not store.exists():
        raise CorruptStoreError(f"{store}: no such store; check the path")
    if not path.is_file():
        raise CorruptStoreError(
            f"{store}: not a gristmill {kind} store (no {MANIFEST_NAME}); "
            f"point at a directory written by gristmill"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptStoreError(
            f"{path}: manifest is not valid JSON ({exc}); rebuild the store"
        ) from exc
    if manifest.get("kind") != kind:
        raise CorruptStoreError(
            f"{path}: this is a {manifest.get('kind')!r} store, expected a {kind!r} store"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CorruptStoreError(
            f"{path}: format version {manifest.get('format_version')} is not supported "
            f"(this gristmill reads version {FORMAT_VERSION}); rebuild the store"
        )
    return manifest
