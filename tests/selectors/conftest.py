"""Fixtures for the selector tests: small planted pools and the selector conformance check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from synthetic import blobs, unit  # noqa: F401 - re-exported for fixtures below

from gristmill.selectors import Pool, select


@pytest.fixture
def clustered_pool() -> Pool:
    """120 unit vectors in 4 blobs of 30 in 16-d, with clusters = the blobs, 2 domains."""
    vectors, labels = blobs([30, 30, 30, 30])
    domains = (np.arange(len(labels)) % 2).astype(np.int32)
    return Pool.from_arrays(vectors, labels=labels, domains=domains,
                            domain_names=["even", "odd"])


@pytest.fixture
def check_selector() -> Callable[..., None]:
    """STYLE.md 17: sorted unique in-range rows, exact budget, same seed same answer,
    budget equal to the pool returns everything."""

    def check(method: str, pool: Pool, budget: int, **params: Any) -> None:
        first = select(method, pool, budget, seed=3, **params)
        again = select(method, pool, budget, seed=3, **params)
        chosen = first.selected
        assert chosen.dtype == np.int64 and len(chosen) == budget
        assert np.all(np.diff(chosen) > 0) and chosen[0] >= 0 and chosen[-1] < pool.size
        np.testing.assert_array_equal(chosen, again.selected)
        np.testing.assert_array_equal(first.weights, again.weights)
        assert len(first.scores) == pool.size and len(first.weights) == budget
        everything = select(method, pool, pool.size, seed=3, **params)
        np.testing.assert_array_equal(everything.selected, np.arange(pool.size))
        fraction = select(method, pool, "1.0", seed=5, **params)
        np.testing.assert_array_equal(fraction.selected, np.arange(pool.size))

    return check


@pytest.fixture(scope="session")
def real_stores(tmp_path_factory: pytest.TempPathFactory,
                demo_records: list[dict[str, Any]]) -> dict[str, Any]:
    """A real corpus store (20 demo documents per domain + 6 planted exact copies, 3 shards)
    embedded with the default packaged model (max 64 tokens, to stay quick on 2 cores)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gristmill import ingest
    from gristmill.embed import embed_store

    root = tmp_path_factory.mktemp("real-stores")
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for record in demo_records:
        by_domain.setdefault(record["domain"], []).append(record)
    picked = [r for records in by_domain.values() for r in records[:20]]
    copies = [{**picked[i], "id": f"copy-of-{picked[i]['id']}"} for i in (3, 25, 47, 70, 91, 113)]
    records = [{"id": r["id"], "text": r["text"], "domain": r["domain"]}
               for r in picked + copies]
    source = root / "input.parquet"
    pq.write_table(pa.Table.from_pylist(records), source)
    corpus = ingest([source], root / "corpus", domain_field="domain", id_field="id",
                    rows_per_shard=50, progress=False)
    emb = embed_store(corpus.path, root / "emb", max_tokens=64, progress=False)
    return {"root": root, "corpus": corpus.path, "emb": emb.store.path,
            "rows": corpus.num_rows, "copies": [c["id"] for c in copies]}
