"""Properties (hypothesis): ids are unique and deterministic; the writer keeps every row once,
in order, with no row group or shard over its limit."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gristmill.storage.ids import make_ids
from gristmill.storage.writer import ShardWriter

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@given(key=st.text(min_size=1, max_size=30),
       positions=st.lists(st.integers(0, 2**62), min_size=1, max_size=200, unique=True))
@settings(max_examples=60, deadline=None)
def test_ids_unique_deterministic_hex(key, positions):
    ids = make_ids(key, np.asarray(positions, np.int64)).to_pylist()
    assert ids == make_ids(key, np.asarray(positions, np.int64)).to_pylist()
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and set(i) <= set("0123456789abcdef") for i in ids)
    # position k of a source gets the same id whether made alone or in a batch
    assert make_ids(key, np.asarray(positions[-1:], np.int64)).to_pylist() == ids[-1:]


def test_ids_differ_between_sources():
    positions = np.arange(1000, dtype=np.int64)
    a = set(make_ids("a.jsonl", positions).to_pylist())
    b = set(make_ids("b.jsonl", positions).to_pylist())
    assert not a & b


@given(chunks=st.lists(st.integers(0, 40), min_size=1, max_size=12),
       row_group_rows=st.integers(1, 16), rows_per_shard=st.one_of(st.none(), st.integers(1, 50)))
@SETTINGS
def test_writer_keeps_rows_in_order_within_limits(tmp_path_factory, chunks, row_group_rows,
                                                  rows_per_shard):
    directory = tmp_path_factory.mktemp("w")
    schema = pa.schema([("id", pa.int64()), ("text", pa.large_string())])
    writer = ShardWriter(directory, schema, rows_per_shard, row_group_rows=row_group_rows)
    start = 0
    for n in chunks:
        ids = np.arange(start, start + n)
        writer.write(pa.table({"id": ids, "text": pa.array([f"t{i}" for i in ids],
                                                             pa.large_string())}))
        start += n
    shards = writer.close()
    seen: list[int] = []
    for shard in shards:
        meta = pq.read_metadata(directory / shard["path"])
        assert meta.num_rows == shard["rows"] > 0
        if rows_per_shard:
            assert shard["rows"] <= rows_per_shard
        for g in range(meta.num_row_groups):
            assert meta.row_group(g).num_rows <= row_group_rows
        seen += pq.read_table(directory / shard["path"]).column("id").to_pylist()
    assert seen == list(range(start))
    # every shard but the last is full when a row limit is set
    if rows_per_shard:
        assert all(s["rows"] == rows_per_shard for s in shards[:-1])


@given(docs=st.lists(st.tuples(st.text(max_size=60), st.integers(0, 2)), min_size=1,
                     max_size=60),
       block_bytes=st.integers(16, 400))
@SETTINGS
def test_jsonl_blocks_keep_every_document_once_with_line_ids(tmp_path_factory, monkeypatch,
                                                             docs, block_bytes):
    """Whatever the block size (lines split across blocks, blank lines anywhere), every
    non-empty document comes out once, in order, with the id of its line."""
    import json

    from gristmill import ingest
    from gristmill.storage import sources

    monkeypatch.setattr(sources, "BLOCK_BYTES", block_bytes)
    lines: list[str] = []
    expected: list[tuple[str, int]] = []
    for text, blanks in docs:
        lines += [""] * blanks
        if text.strip():
            expected.append((text, len(lines)))
        lines.append(json.dumps({"text": text}, ensure_ascii=False))
    tmp = tmp_path_factory.mktemp("p")
    (tmp / "d.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if not expected:
        return
    store = ingest([tmp / "d.jsonl"], tmp / "s")
    table = store.dataset().to_table()
    assert table.column("text").to_pylist() == [t for t, _ in expected]
    want_ids = make_ids("d.jsonl", np.asarray([p for _, p in expected], np.int64)).to_pylist()
    assert table.column("id").to_pylist() == want_ids
