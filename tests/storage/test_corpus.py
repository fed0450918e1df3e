"""Opening a store checks sizes and footers; `verify` (and `info --verify`) checks checksums."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from gristmill import CorruptStoreError, ingest, open_store
from gristmill.cli import app

runner = CliRunner()


@pytest.fixture
def store_path(write_jsonl, tmp_path):
    records = [{"text": f"document {i} " + "word " * (i % 7), "d": "ab"[i % 2]}
               for i in range(30)]
    ingest([write_jsonl(records)], tmp_path / "store", domain_field="d", rows_per_shard=10)
    return tmp_path / "store"


def test_open_reads_back_in_row_order(store_path):
    store = open_store(store_path)
    assert store.num_rows == 30
    ids = [t.column("id") for _, _, t in store.iter_batches(["id"])]
    assert sum(len(i) for i in ids) == 30
    assert store.read_row_group(1, 0, ["text"]).column("text")[0].as_py().startswith("document 10")
    assert list(store.read_column("n_chars")[:2]) == [len("document 0 "), len("document 1 word ")]


def test_missing_shard(store_path):
    (store_path / "part-00001.parquet").unlink()
    with pytest.raises(CorruptStoreError, match=r"part-00001.parquet: shard listed .* missing"):
        open_store(store_path)


def test_truncated_shard_fails_on_size(store_path):
    shard = store_path / "part-00002.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CorruptStoreError, match=r"part-00002.parquet: \d+ bytes on disk"):
        open_store(store_path)


def test_same_size_but_changed_bytes_fails_verify_only(store_path):
    shard = store_path / "part-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF  # inside the first data page: size and footer unchanged
    shard.write_bytes(bytes(data))
    store = open_store(store_path)  # cheap checks pass
    with pytest.raises(CorruptStoreError, match="part-00000.parquet: sha256"):
        store.verify()
    result = runner.invoke(app, ["info", str(store_path), "--verify"])
    assert result.exit_code == 2
    assert "part-00000.parquet" in result.output and "re-ingest" in result.output


def test_replaced_shard_with_other_footer(store_path, tmp_path):
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"text": ["x"] * 3}), other)
    shard = store_path / "part-00001.parquet"
    size = shard.stat().st_size
    data = other.read_bytes()
    shard.write_bytes(data + b"\0" * (size - len(data)) if len(data) < size else data[:size])
    with pytest.raises(CorruptStoreError, match="part-00001.parquet"):
        open_store(store_path)


def test_stray_parquet_file(store_path):
    shutil.copy(store_path / "part-00000.parquet", store_path / "extra.parquet")
    with pytest.raises(CorruptStoreError, match="extra.parquet: shard not listed"):
        open_store(store_path)


def test_not_a_store(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorruptStoreError, match="no manifest.json"):
        open_store(tmp_path / "empty")
    with pytest.raises(CorruptStoreError, match="no such store"):
        open_store(tmp_path / "nope")


def test_manifest_of_another_version(store_path):
    path = store_path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 99
    path.write_text(json.dumps(manifest))
    with pytest.raises(CorruptStoreError, match="format version 99"):
        open_store(store_path)


def test_info_table_and_json(store_path):
    result = runner.invoke(app, ["info", str(store_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["rows"] == 30
    assert {d: s["rows"] for d, s in summary["domains"].items()} == {"a": 15, "b": 15}
    lengths = sorted(len(f"document {i} " + "word " * (i % 7)) for i in range(30))
    assert summary["n_chars"]["max"] == lengths[-1]
    assert summary["n_chars"]["p50"] in (lengths[14], lengths[15])
    assert summary["domains"]["a"]["chars"] + summary["domains"]["b"]["chars"] == sum(lengths)
    table = runner.invoke(app, ["info", str(store_path), "--verify"])
    assert table.exit_code == 0
    assert "all shards match" in table.output
    assert "a" in table.output and "30" in table.output
