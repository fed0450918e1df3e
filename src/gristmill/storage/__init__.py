"""Corpus storage: ingest inputs into versioned Parquet stores and read them back.

`ingest` writes a store; `open_store` / `CorpusStore` read one row-aligned by shard and row
group; `summarize` gives per-domain counts and length percentiles.
"""

from gristmill.storage.atomic import atomic_directory, check_output
from gristmill.storage.clusters import ClusterStore, open_clusters
from gristmill.storage.corpus import CorpusStore, Shard, open_store
from gristmill.storage.info import summarize
from gristmill.storage.ingest import ingest

__all__ = [
    "ClusterStore",
    "CorpusStore",
    "Shard",
    "atomic_directory",
    "check_output",
    "ingest",
    "open_clusters",
    "open_store",
    "summarize",
]
