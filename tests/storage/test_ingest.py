"""Ingest: every input format, the store's layout and manifest, ids, domains and shards."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from gristmill import CorpusStore, ingest, open_store

RECORDS = [
    {"text": "The cat sat on the mat.", "topic": "animals", "score": 0.5},
    {"text": "Photosynthesis makes sugar from light.", "topic": "biology", "score": 0.9},
    {"text": "   ", "topic": "empty", "score": 0.0},
    {"text": "Rivers run to the sea.", "topic": "geography", "score": 0.1},
]
KEPT = [r for r in RECORDS if r["text"].strip()]


def read_all(store: str | Path) -> list[dict[str, Any]]:
    """Rows as the issue promises every reader sees them: pyarrow.dataset over the store."""
    table = pads.dataset(store, format="parquet", exclude_invalid_files=True).to_table()
    return table.to_pylist()


def test_jsonl_roundtrip_keeps_order_extras_and_drops_empty(write_jsonl, tmp_path):
    src = write_jsonl(RECORDS, "docs.jsonl")
    store = ingest([src], tmp_path / "store")
    rows = read_all(tmp_path / "store")
    assert [r["text"] for r in rows] == [r["text"] for r in KEPT]
    assert [r["topic"] for r in rows] == [r["topic"] for r in KEPT]
    assert [r["n_chars"] for r in rows] == [len(r["text"]) for r in KEPT]
    assert {r["domain"] for r in rows} == {"docs"}  # file stem when no domain is given
    assert store.manifest["dropped"]["empty"] == 1
    assert list(rows[0])[:4] == ["id", "text", "domain", "n_chars"]


def test_keep_empty_keeps_whitespace_documents(write_jsonl, tmp_path):
    store = ingest([write_jsonl(RECORDS)], tmp_path / "s", keep_empty=True)
    assert store.num_rows == len(RECORDS)
    assert store.manifest["dropped"]["empty"] == 0


def test_generated_ids_are_stable_unique_and_independent_of_location(write_jsonl, tmp_path):
    first = ingest([write_jsonl(RECORDS)], tmp_path / "a")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    copy = moved / "data.jsonl"
    copy.write_bytes((tmp_path / "data.jsonl").read_bytes())
    second = ingest([copy], tmp_path / "b")
    ids_a = first.dataset().to_table(columns=["id"]).column("id").to_pylist()
    ids_b = second.dataset().to_table(columns=["id"]).column("id").to_pylist()
    assert ids_a == ids_b
    assert len(set(ids_a)) == len(ids_a)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids_a)


def test_ids_follow_line_positions_so_edits_elsewhere_keep_them(write_jsonl, tmp_path):
    base = ingest([write_jsonl(KEPT)], tmp_path / "a").read_shard(0).to_pylist()
    edited = [dict(KEPT[0], text="changed text"), *KEPT[1:]]
    other = ingest([write_jsonl(edited)], tmp_path / "b").read_shard(0).to_pylist()
    assert [r["id"] for r in base] == [r["id"] for r in other]


def test_input_ids_and_domain_field(write_jsonl, tmp_path):
    records = [{"doc": i, "body": f"document number {i}", "lang": "en" if i % 2 else "de"}
               for i in range(6)]
    store = ingest([write_jsonl(records)], tmp_path / "s", text_field="body",
                   id_field="doc", domain_field="lang")
    rows = read_all(tmp_path / "s")
    assert [r["id"] for r in rows] == [str(i) for i in range(6)]  # integers become strings
    assert [r["domain"] for r in rows] == ["de", "en"] * 3
    assert "body" not in rows[0] and "doc" not in rows[0] and "lang" not in rows[0]
    assert store.domains == {"de": {"rows": 3, "bytes": 51, "chars": 51},
                             "en": {"rows": 3, "bytes": 51, "chars": 51}}


def test_one_domain_for_everything(write_jsonl, tmp_path):
    ingest([write_jsonl(KEPT)], tmp_path / "s", domain="web")
    assert {r["domain"] for r in read_all(tmp_path / "s")} == {"web"}


def test_domain_is_dictionary_encoded_and_types_are_the_contract(write_jsonl, tmp_path):
    store = ingest([write_jsonl(KEPT)], tmp_path / "s")
    schema = store.schema
    assert schema.field("id").type == pa.string()
    assert schema.field("text").type == pa.large_string()
    assert pa.types.is_dictionary(schema.field("domain").type)
    assert schema.field("n_chars").type == pa.int32()


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_compressed_jsonl(tmp_path, suffix):
    raw = b"".join(json.dumps(r).encode() + b"\n" for r in KEPT)
    path = tmp_path / f"docs{suffix}"
    if suffix.endswith(".gz"):
        path.write_bytes(gzip.compress(raw))
    else:
        with pa.CompressedOutputStream(str(path), "zstd") as out:
            out.write(raw)
    ingest([path], tmp_path / "s")
    rows = read_all(tmp_path / "s")
    assert [r["text"] for r in rows] == [r["text"] for r in KEPT]
    assert {r["domain"] for r in rows} == {"docs"}


def test_parquet_and_csv_inputs(tmp_path):
    table = pa.Table.from_pylist(KEPT)
    pq.write_table(table, tmp_path / "a.parquet")
    pcsv.write_csv(table, tmp_path / "b.csv")
    store = ingest([tmp_path / "a.parquet", tmp_path / "b.csv"], tmp_path / "s")
    rows = read_all(tmp_path / "s")
    assert [r["text"] for r in rows] == [r["text"] for r in KEPT] * 2
    assert [r["domain"] for r in rows] == ["a"] * 3 + ["b"] * 3
    assert store.manifest["sources"][0]["kind"] == "parquet"
    assert store.manifest["sources"][1]["kind"] == "csv"


def test_hf_save_to_disk_and_dataset_objects(tmp_path):
    ds = datasets.Dataset.from_list(KEPT)
    ds.save_to_disk(str(tmp_path / "hf"))
    from_disk = ingest([tmp_path / "hf"], tmp_path / "s1")
    from_object = ingest([ds], tmp_path / "s2")
    for store in (from_disk, from_object):
        assert [r["text"] for r in store.read_shard(0).to_pylist()] == [r["text"] for r in KEPT]
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([0])})
    dd.save_to_disk(str(tmp_path / "hfdict"))
    assert ingest([tmp_path / "hfdict"], tmp_path / "s3").num_rows == 4


def test_text_folder_subfolders_are_domains(tmp_path):
    root = tmp_path / "texts"
    for domain, name, text in [("law", "a.txt", "Contracts bind."), ("law", "b.md", "Torts."),
                               ("poems", "c.txt", "Roses are red."), ("poems", "d.txt", " \n")]:
        (root / domain).mkdir(parents=True, exist_ok=True)
        (root / domain / name).write_text(text)
    (root / ".hidden").write_text("never read")
    store = ingest([root], tmp_path / "s")
    rows = read_all(tmp_path / "s")
    assert [(r["domain"], r["path"], r["text"]) for r in rows] == [
        ("law", "law/a.txt", "Contracts bind."), ("law", "law/b.md", "Torts."),
        ("poems", "poems/c.txt", "Roses are red.")]
    assert store.manifest["dropped"]["empty"] == 1
    # A file's id depends on its own path only: adding files keeps the others' ids.
    (root / "law" / "0.txt").write_text("A new first file.")
    again = {r["path"]: r["id"] for r in ingest([root], tmp_path / "s2").read_shard(0).to_pylist()}
    assert all(again[r["path"]] == r["id"] for r in rows)


def test_shards_and_row_groups(write_jsonl, tmp_path):
    records = [{"text": f"doc {i}"} for i in range(25)]
    store = ingest([write_jsonl(records)], tmp_path / "s", rows_per_shard=10, row_group_rows=4)
    assert [s.rows for s in store.shards] == [10, 10, 5]
    assert [s.offset for s in store.shards] == [0, 10, 20]
    assert [s.row_groups for s in store.shards] == [3, 3, 2]
    seen = [(shard, start, t.num_rows) for shard, start, t in store.iter_batches(["id"])]
    assert seen[:4] == [(0, 0, 4), (0, 4, 4), (0, 8, 2), (1, 10, 4)]
    texts = pc.cast(store.dataset().to_table().column("text"), pa.string()).to_pylist()
    assert texts == [f"doc {i}" for i in range(25)]


def test_store_layout_only_data_shards_end_in_parquet(write_jsonl, tmp_path):
    ingest([write_jsonl(KEPT)], tmp_path / "s", rows_per_shard=2)
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names == ["manifest.json", "part-00000.parquet", "part-00001.parquet"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_manifest_records_counts_checksums_and_settings(write_jsonl, tmp_path):
    store = ingest([write_jsonl(RECORDS)], tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["kind"] == "corpus" and manifest["format_version"] == 1
    assert manifest["rows"] == 3 and manifest["chars"] == sum(len(r["text"]) for r in KEPT)
    assert manifest["domains"]["data"]["rows"] == 3
    assert len(manifest["shards"][0]["sha256"]) == 64
    assert manifest["params"]["text_field"] == "text"
    assert manifest["sources"][0]["records"] == 4 and manifest["sources"][0]["rows"] == 3
    assert store.fingerprint == manifest["fingerprint"]


def test_overwrite_replaces_and_reuse_keeps(write_jsonl, tmp_path):
    src = write_jsonl(KEPT)
    ingest([src], tmp_path / "s")
    mtime = (tmp_path / "s" / "manifest.json").stat().st_mtime_ns
    reused = ingest([src], tmp_path / "s", reuse=True)
    assert (tmp_path / "s" / "manifest.json").stat().st_mtime_ns == mtime
    assert reused.num_rows == 3
    replaced = ingest([write_jsonl(KEPT[:1], "one.jsonl")], tmp_path / "s", overwrite=True)
    assert replaced.num_rows == 1 and open_store(tmp_path / "s").num_rows == 1


def test_schema_fixed_by_first_records_later_columns_fit(write_jsonl, tmp_path):
    records = [{"text": "a b", "n": 1}, {"text": "c d", "extra": "late"}]
    store = ingest([write_jsonl(records)], tmp_path / "s", keep_empty=True)
    assert store.num_rows == 2  # one block: Arrow infers both columns
    first = write_jsonl([{"text": "x y", "n": 1}], "first.jsonl")
    second = write_jsonl([{"text": "z w", "other": 5}], "second.jsonl")
    mixed = ingest([first, second], tmp_path / "m")
    assert mixed.manifest["dropped_columns"] == {"other": "not in the first records read"}
    assert [r["n"] for r in read_all(tmp_path / "m")] == [1, None]


def test_demo_slice_roundtrip(demo_records, tmp_path):
    """Real text from every demo domain survives ingest byte for byte."""
    pq.write_table(pa.Table.from_pylist(demo_records), tmp_path / "demo.parquet")
    store = ingest([tmp_path / "demo.parquet"], tmp_path / "s", domain_field="domain",
                   id_field="id", rows_per_shard=50)
    assert isinstance(store, CorpusStore)
    rows = read_all(tmp_path / "s")
    assert [r["id"] for r in rows] == [r["id"] for r in demo_records]
    assert [r["text"] for r in rows] == [r["text"] for r in demo_records]
    assert set(store.domains) == {r["domain"] for r in demo_records}


def test_folder_of_data_files_ignores_other_files(tmp_path):
    folder = tmp_path / "shards"
    (folder / "web").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(KEPT), folder / "web" / "a.parquet")
    (folder / "b.jsonl").write_text(json.dumps({"text": "from jsonl"}) + "\n")
    (folder / "README.md").write_text("not a document")
    store = ingest([folder], tmp_path / "s")
    rows = read_all(tmp_path / "s")
    assert sorted(r["text"] for r in rows) == sorted([r["text"] for r in KEPT] + ["from jsonl"])
    assert store.domains.keys() == {"web", "b"}  # sub-folder, else file stem


def test_dataset_with_indices_mapping_keeps_its_order(tmp_path):
    ds = datasets.Dataset.from_list([{"text": f"doc {i}"} for i in range(20)])
    shuffled = ds.shuffle(seed=3).select(range(10))
    store = ingest([shuffled], tmp_path / "s")
    assert [r["text"] for r in read_all(tmp_path / "s")] == shuffled["text"]
    assert store.num_rows == 10


def test_reuse_rebuilds_a_damaged_store(write_jsonl, tmp_path):
    src = write_jsonl(KEPT)
    ingest([src], tmp_path / "s")
    (tmp_path / "s" / "part-00000.parquet").write_bytes(b"garbage")
    assert ingest([src], tmp_path / "s", reuse=True).num_rows == 3
    open_store(tmp_path / "s").verify()
