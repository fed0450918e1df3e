"""Bad input: a one-line error naming the file/line/row and the remedy, exit code 2, and no
partial store left behind (checked through the real CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from gristmill.cli import app

runner = CliRunner()


def run_ingest(tmp_path: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["ingest", *args, "--out", str(tmp_path / "store")])
    return result.exit_code, result.output


def assert_refused(tmp_path: Path, code: int, output: str, *needles: str) -> None:
    assert code == 2, output
    message = " ".join(output.split())
    assert message.startswith("error:"), output
    for needle in needles:
        assert needle in message, (needle, message)
    assert not (tmp_path / "store").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".store")]


def test_missing_text_field_names_fields_and_option(write_jsonl, tmp_path):
    src = write_jsonl([{"body": "hello", "title": "t"}])
    code, out = run_ingest(tmp_path, str(src))
    assert_refused(tmp_path, code, out, "data.jsonl", "no 'text' field", "body, title",
                   "--text-field")


def test_missing_text_in_one_record_names_its_line(write_jsonl, tmp_path):
    src = write_jsonl([{"text": "fine"}, {"text": "fine too"}, {"body": "no text"}])
    code, out = run_ingest(tmp_path, str(src))
    assert_refused(tmp_path, code, out, "data.jsonl line 3", "no 'text' field")


def test_wrong_type_names_line_and_type(write_jsonl, tmp_path):
    src = write_jsonl([{"text": "fine"}, {"text": 42}])
    code, out = run_ingest(tmp_path, str(src))
    assert_refused(tmp_path, code, out, "data.jsonl line 2", "'text' is a number",
                   "expected a string")


def test_wrong_type_in_every_record(write_jsonl, tmp_path):
    src = write_jsonl([{"text": ["a", "list"]}, {"text": ["b"]}])
    code, out = run_ingest(tmp_path, str(src))
    assert_refused(tmp_path, code, out, "data.jsonl line 1", "expected a string")


def test_invalid_utf8_names_line(write_jsonl, tmp_path):
    src = write_jsonl(['{"text": "ok"}', b'{"text": "caf\xe9 au lait"}'])
    code, out = run_ingest(tmp_path, str(src))
    assert_refused(tmp_path, code, out, "data.jsonl line 2", "invalid UTF-8")


def test_invalid_utf8_in_text_file(tmp_path):
    folder = tmp_path / "texts"
    (folder / "news").mkdir(parents=True)
    (folder / "news" / "good.txt").write_text("fine")
    (folder / "news" / "bad.txt").write_bytes(b"\xff\xfe broken")
    code, out = run_ingest(tmp_path, str(folder))
    assert_refused(tmp_path, code, out, "news/bad.txt", "invalid UTF-8")


def test_invalid_utf8_in_parquet_binary_column(tmp_path):
    table = pa.table({"text": pa.array([b"fine", b"\xc3\x28 bad"], pa.binary())})
    pq.write_table(table, tmp_path / "t.parquet")
    code, out = run_ingest(tmp_path, str(tmp_path / "t.parquet"))
    assert_refused(tmp_path, code, out, "t.parquet row 1", "invalid UTF-8")


def test_empty_documents_dropped_and_counted(write_jsonl, tmp_path):
    src = write_jsonl([{"text": ""}, {"text": " \t\n"}, {"text": "real"}])
    code, out = run_ingest(tmp_path, str(src))
    assert code == 0, out
    assert "dropped: 2 empty" in " ".join(out.split())


def test_only_empty_documents_is_an_error(write_jsonl, tmp_path):
    src = write_jsonl([{"text": ""}, {"text": "   "}])
    code, out = run_ingest(tmp_path, str(src))
    assert_refused(tmp_path, code, out, "no documents", "2 empty", "--keep-empty")


def test_duplicate_input_ids_name_both_lines(write_jsonl, tmp_path):
    src = write_jsonl([{"id": "a", "text": "x"}, {"id": "b", "text": "y"},
                       {"id": "a", "text": "z"}])
    code, out = run_ingest(tmp_path, str(src), "--id-field", "id")
    assert_refused(tmp_path, code, out, "duplicate id 'a'", "data.jsonl line 1",
                   "data.jsonl line 3")


def test_truncated_jsonl_line(tmp_path):
    src = tmp_path / "cut.jsonl"
    src.write_bytes(b'{"text": "one"}\n{"text": "two"}\n{"text": "thr')
    code, out = run_ingest(tmp_path, str(src))
    assert_refused(tmp_path, code, out, "cut.jsonl line 3", "truncated or invalid JSON",
                   "--skip-bad-records")


def test_skip_bad_records_counts_and_skips(tmp_path):
    src = tmp_path / "cut.jsonl"
    src.write_bytes(b'{"text": "one"}\n{"text": \n{"text": 5}\n{"text": "four"}\n{"text": "fi')
    code, out = run_ingest(tmp_path, str(src), "--skip-bad-records")
    assert code == 0, out
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["rows"] == 2 and manifest["dropped"]["bad_records"] == 3


def test_corrupt_parquet_file(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": ["a doc"]}), good)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[:-20])  # footer cut off
    code, out = run_ingest(tmp_path, str(good), str(bad))
    assert_refused(tmp_path, code, out, "bad.parquet", "not a readable Parquet file")
    code, out = run_ingest(tmp_path, str(good), str(bad), "--skip-bad-records")
    assert code == 0, out
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["rows"] == 1 and manifest["dropped"]["bad_files"] == 1


def test_existing_output_needs_overwrite(write_jsonl, tmp_path):
    src = write_jsonl([{"text": "x"}])
    assert run_ingest(tmp_path, str(src))[0] == 0
    before = (tmp_path / "store" / "manifest.json").read_bytes()
    code, out = run_ingest(tmp_path, str(src))
    assert code == 2 and "already exists" in out and "--overwrite" in out
    assert (tmp_path / "store" / "manifest.json").read_bytes() == before


def test_path_that_does_not_exist(tmp_path):
    code, out = run_ingest(tmp_path, str(tmp_path / "nope.jsonl"))
    assert_refused(tmp_path, code, out, "nope.jsonl", "no such file")


@pytest.mark.parametrize("content", [b"", b"\n\n"])
def test_empty_input(tmp_path, content):
    src = tmp_path / "empty.jsonl"
    src.write_bytes(content)
    code, out = run_ingest(tmp_path, str(src))
    assert_refused(tmp_path, code, out, "no documents")


def test_empty_folder(tmp_path):
    (tmp_path / "nothing").mkdir()
    code, out = run_ingest(tmp_path, str(tmp_path / "nothing"))
    assert_refused(tmp_path, code, out, "no input files")


def test_same_file_twice(write_jsonl, tmp_path):
    src = write_jsonl([{"text": "x"}])
    code, out = run_ingest(tmp_path, str(src), str(src))
    assert_refused(tmp_path, code, out, "share the name", "data.jsonl")


def test_domain_options_are_exclusive(write_jsonl, tmp_path):
    src = write_jsonl([{"text": "x", "d": "a"}])
    code, out = run_ingest(tmp_path, str(src), "--domain", "a", "--domain-field", "d")
    assert_refused(tmp_path, code, out, "--domain-field or --domain")


def test_console_script_exit_code_and_stderr(tmp_path):
    """The installed entry point, not only the runner: exit 2 and one line on stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "gristmill", "ingest", str(tmp_path / "missing.jsonl"),
         "--out", str(tmp_path / "store")], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "missing.jsonl" in proc.stderr


def test_null_id_and_missing_domain_field(write_jsonl, tmp_path):
    src = write_jsonl([{"id": "a", "text": "x"}, {"id": None, "text": "y"}])
    code, out = run_ingest(tmp_path, str(src), "--id-field", "id")
    assert_refused(tmp_path, code, out, "data.jsonl line 2", "the id is missing")
    code, out = run_ingest(tmp_path, str(src), "--domain-field", "lang")
    assert_refused(tmp_path, code, out, "no domain field 'lang'", "--domain NAME")


def test_error_after_shards_were_written_leaves_nothing(write_jsonl, tmp_path):
    """The background writer has shards open when a later source fails: all of it goes."""
    from gristmill import InputError, ingest

    good = write_jsonl([{"text": f"doc {i}"} for i in range(500)], "good.jsonl")
    bad = write_jsonl([{"text": "fine"}, '{"text": "cut'], "bad.jsonl")
    with pytest.raises(InputError, match="bad.jsonl line 2"):
        ingest([good, bad], tmp_path / "store", rows_per_shard=50, row_group_rows=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl"]
