"""gristmill: data curation and sampling for training ML models.

Stages, each a subpackage, with data flowing one way:
storage -> embed -> selectors -> packing -> samplers; `flows` wires them into Prefect flows and
`cli` exposes them as the `gristmill` command.

Example:
    >>> import gristmill
    >>> store = gristmill.ingest(["corpus.jsonl"], "out/corpus")   # doctest: +SKIP
    >>> gristmill.open_store("out/corpus").num_rows                 # doctest: +SKIP
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gristmill")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

from gristmill.errors import (
    ConfigError,
    CorruptStoreError,
    GristmillError,
    InputError,
    MissingDependencyError,
    ModelError,
    SchemaError,
)
from gristmill.storage import CorpusStore, ingest, open_store

__all__ = [
    "ConfigError",
    "CorpusStore",
    "CorruptStoreError",
    "GristmillError",
    "InputError",
    "MissingDependencyError",
    "ModelError",
    "SchemaError",
    "__version__",
    "ingest",
    "open_store",
]
