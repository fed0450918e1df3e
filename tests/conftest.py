"""Shared fixtures: a hermetic environment (no hub, no network) and small real inputs."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# Nothing may reach a hub, and nothing may touch the user's caches or Prefect profile.
_HOME = tempfile.mkdtemp(prefix="gristmill-tests-")
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    HF_HOME=os.path.join(_HOME, "hf"),
    PREFECT_HOME=os.path.join(_HOME, "prefect"),
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
    TOKENIZERS_PARALLELISM="false",
)
os.environ.pop("PREFECT_API_URL", None)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests skip on machines without CUDA."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Write records (dicts, or raw str/bytes lines) to a JSONL file under tmp_path."""

    def write(records: list[Any], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        lines = []
        for record in records:
            if isinstance(record, bytes):
                lines.append(record)
            elif isinstance(record, str):
                lines.append(record.encode())
            else:
                lines.append(json.dumps(record).encode())
        path.write_bytes(b"\n".join(lines) + b"\n")
        return path

    return write


@pytest.fixture(scope="session")
def demo_records() -> list[dict[str, Any]]:
    """A slice of the real demo corpus: 40 documents from each domain."""
    import pyarrow.parquet as pq

    records: list[dict[str, Any]] = []
    for path in sorted(DEMO.glob("*.parquet")):
        records += pq.read_table(path).slice(0, 40).to_pylist()
    assert records, f"demo corpus missing under {DEMO}"
    return records
