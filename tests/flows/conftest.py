"""Flow fixtures: one Prefect test harness per session and a small real corpus on disk."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect server + SQLite for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """The first 25 documents of each demo domain, one Parquet file per domain (150 docs)."""
    out = tmp_path_factory.mktemp("flowcorpus") / "corpus"
    out.mkdir()
    for file in sorted((REPO / "data" / "demo").glob("*.parquet")):
        pq.write_table(pq.read_table(file).slice(0, 25), out / file.name)
    return out
