"""Find the inputs behind `ingest SRC...` and read each one as a stream of bounded Arrow chunks.

Every chunk carries the 0-based record position of each row in its source (JSONL line, table
row, file index), so ids are stable and errors can name the line or row at fault. Readers never
hold more than one block (`BLOCK_BYTES` of input) at a time, whatever the input size.
"""

from __future__ import annotations

import glob
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from gristmill.errors import InputError, SchemaError
from gristmill.storage.ids import make_ids

log = logging.getLogger(__name__)

# Input read per step. 8 MB blocks (1 MB per Arrow JSON parse task) ran as fast as 32 MB and
# cut peak RSS from ~550 to ~330 MiB on 1 GB of JSONL (benchmarks/RESULTS.md).
BLOCK_BYTES = 8 << 20
JSON_BLOCK_BYTES = 1 << 20
TABLE_BATCH_ROWS = 65_536
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
CODECS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}


@dataclass
class Source:
    """One input: a file, a folder of text files, or a Hugging Face dataset."""

    kind: str  # jsonl | parquet | csv | hf | text
    key: str  # stable name used for ids: path relative to the parent of the SRC argument
    default_domain: str
    path: Path | None = None
    size: int = 0
    dataset: Any = None  # an in-memory datasets.Dataset
    files: list[Path] = field(default_factory=list)  # text folders: the documents, sorted
    stats: dict[str, int] = field(default_factory=lambda: {"records": 0, "bad_records": 0})

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else self.key

    def where(self, position: int) -> str:
        """Human location of a record: `file line N` (1-based) or `file row N` (0-based)."""
        if self.kind == "jsonl":
            return f"{self.label} line {position + 1}"
        if self.kind == "text":
            return self.label
        return f"{self.label} row {position}"


@dataclass
class Chunk:
    """Rows read from one source; `positions` (n,) int64 are record positions in that source."""

    source: Source
    table: pa.Table
    positions: np.ndarray
    ids: pa.Array | None = None  # readers that know better ids than (key, position) set these
    domains: pa.Array | None = None  # per-row default domains (text folders: the sub-folder)
    utf8_checked: bool = False  # the reader already validated every string column
    bytes_read: int = 0


@dataclass(frozen=True)
class ReadOptions:
    text_field: str
    skip_bad_records: bool


# ---------------------------------------------------------------------------------------------
# Discovery


def _strip_codec(name: str) -> tuple[str, str | None]:
    for suffix, codec in CODECS.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], codec
    return name, None


def _kind_of_file(path: Path) -> str | None:
    name, _ = _strip_codec(path.name.lower())
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    return None


def _stem(path: Path) -> str:
    name, _ = _strip_codec(path.name)
    return name.split(".")[0] or path.name


def _is_hf_dir(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _expand(arg: str | Path) -> list[Path]:
    path = Path(arg)
    if path.exists():
        return [path]
    matches = sorted(glob.glob(str(arg), recursive=True)) if glob.has_magic(str(arg)) else []
    if not matches:
        raise InputError(f"{arg}: no such file or directory; check the path")
    return [Path(m) for m in matches]


def _dir_sources(root: Path) -> list[Source]:
    """A folder: its JSONL/Parquet/CSV files if it has any, else one document per text file."""
    sources: list[Source] = []
    text_files: list[Path] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if any(part.startswith((".", "_")) for part in rel.parts):
            continue  # hidden files, manifests and `_`-prefixed side folders
        kind = _kind_of_file(path)
        if kind is None:
            text_files.append(path)
            continue
        domain = rel.parts[0] if len(rel.parts) > 1 else _stem(path)
        key = f"{root.name}/{rel.as_posix()}"
        sources.append(Source(kind, key, domain, path, path.stat().st_size))
    if sources and text_files:
        # A folder of data files (say Parquet shards beside a README): read the data only.
        log.info("%s: ignoring %d non-data files such as %s", root, len(text_files),
                 text_files[0].name)
    elif text_files:
        size = sum(p.stat().st_size for p in text_files)
        sources.insert(0, Source("text", root.name, root.name, root, size, files=text_files))
    return sources


def discover_sources(args: list[Any]) -> list[Source]:
    """Turn ingest arguments (paths, globs, `datasets.Dataset` objects) into sources."""
    sources: list[Source] = []
    for arg in args:
        if not isinstance(arg, str | Path):
            sources.extend(_dataset_sources(arg))
            continue
        for path in _expand(arg):
            if path.is_dir() and _is_hf_dir(path):
                sources.append(Source("hf", path.name, path.name, path, _dir_size(path)))
            elif path.is_dir():
                sources.extend(_dir_sources(path))
            else:
                kind = _kind_of_file(path) or "text"
                sources.append(Source(kind, path.name, _stem(path), path, path.stat().st_size))
    dupes = sorted(k for k, n in Counter(s.key for s in sources).items() if n > 1)
    if dupes:
        raise InputError(
            f"two inputs share the name {dupes[0]!r}, so their generated ids would collide; "
            "pass each file once, rename one, or give ids with --id-field"
        )
    if not sources:
        raise InputError(f"no input files found in {', '.join(map(str, args))}")
    return sources


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _dataset_sources(obj: Any) -> list[Source]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency
        raise InputError(f"cannot ingest {type(obj).__name__}: {exc}") from exc
    if isinstance(obj, datasets.DatasetDict):
        return [_one_dataset(ds, split) for split, ds in obj.items()]
    if isinstance(obj, datasets.Dataset):
        return [_one_dataset(obj, obj.split and str(obj.split) or "dataset")]
    raise InputError(
        f"cannot ingest an object of type {type(obj).__name__}; pass paths or a datasets.Dataset"
    )


def _one_dataset(ds: Any, name: str) -> Source:
    # datasets' fingerprint is deterministic for the same data and transforms: stable ids.
    key = f"dataset:{ds.info.dataset_name or ''}:{ds._fingerprint}:{name}"
    return Source("hf", key, ds.info.dataset_name or name, None, ds.data.nbytes, dataset=ds)


# ---------------------------------------------------------------------------------------------
# Readers


def read_source(source: Source, opts: ReadOptions) -> Iterator[Chunk]:
    """Stream a source as chunks of at most about `BLOCK_BYTES` of input."""
    reader: Callable[[Source, ReadOptions], Iterator[Chunk]] = {
        "jsonl": _read_jsonl,
        "parquet": _read_parquet,
        "csv": _read_csv,
        "hf": _read_hf,
        "text": _read_text_files,
    }[source.kind]
    yield from reader(source, opts)


def bad_record(source: Source, position: int, problem: str, opts: ReadOptions) -> None:
    """Count a bad record with --skip-bad-records, else stop with a message naming it."""
    if opts.skip_bad_records:
        source.stats["bad_records"] += 1
        return
    raise InputError(
        f"{source.where(position)}: {problem}; fix the input or pass --skip-bad-records"
    )


def _open_stream(path: Path) -> tuple[pa.NativeFile, pa.NativeFile]:
    raw = pa.OSFile(str(path), "rb")
    _, codec = _strip_codec(path.name.lower())
    return raw, (pa.CompressedInputStream(raw, codec) if codec else raw)


def _read_jsonl(source: Source, opts: ReadOptions) -> Iterator[Chunk]:
    """Read complete lines into one reused buffer (a fresh 32 MB bytes object per block cost
    9 % of ingest in page faults) and hand Arrow a zero-copy view of them."""
    assert source.path is not None
    raw, stream = _open_stream(source.path)
    buf = bytearray(BLOCK_BYTES)
    filled, line0, done = 0, 0, 0
    try:
        while True:
            if filled == len(buf):  # one line longer than the buffer: a new, larger one
                buf = buf + bytes(len(buf))  # (in-place growth fails while views exist)
            got = _read_into(source, stream, memoryview(buf)[filled:])
            total = filled + got
            if total == 0:
                break
            cut = total if got == 0 else buf.rfind(b"\n", 0, total) + 1
            if cut == 0:
                filled = total
                continue
            body = memoryview(buf)[:cut]
            lines = buf.count(b"\n", 0, cut) + (0 if buf[cut - 1] == 10 else 1)
            table, positions = _parse_jsonl_block(source, body, line0, lines, opts)
            line0 += lines
            buf[: total - cut] = buf[cut:total]
            filled = total - cut
            position_now = raw.tell()
            yield Chunk(source, table, positions, bytes_read=position_now - done,
                        utf8_checked=True)
            done = position_now
            if got == 0:
                break
    finally:
        stream.close()


def _read_into(source: Source, stream: pa.NativeFile, target: memoryview) -> int:
    try:
        return stream.readinto(target)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{source.path}: cannot decompress ({exc}); the file is damaged") from exc


def _parse_jsonl_block(
    source: Source, body: memoryview, line0: int, lines: int, opts: ReadOptions
) -> tuple[pa.Table, np.ndarray]:
    """Parse complete lines with Arrow's multithreaded reader; on any error, fall back to a
    line-by-line parse that finds the bad line (or skips it with --skip-bad-records)."""
    try:
        table = pjson.read_json(
            pa.BufferReader(pa.py_buffer(body)),
            read_options=pjson.ReadOptions(block_size=JSON_BLOCK_BYTES),
            parse_options=pjson.ParseOptions(
                explicit_schema=pa.schema([(opts.text_field, pa.string())]),
                unexpected_field_behavior="infer",
            ),
        )
        # Arrow's JSON reader passes invalid UTF-8 through; full validation catches it.
        table.validate(full=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _parse_jsonl_lines(source, bytes(body), line0, opts)
    if table.num_rows == lines:  # no blank lines: row i is line i
        return table, np.arange(line0, line0 + lines, dtype=np.int64)
    positions = _line_positions(np.frombuffer(body, np.uint8), table.num_rows)
    if positions is None:
        return _parse_jsonl_lines(source, bytes(body), line0, opts)
    return table, positions + line0


def _line_positions(buf: np.ndarray, num_rows: int) -> np.ndarray | None:
    """Line index of each parsed row, skipping blank lines; None if it cannot be matched."""
    newlines = np.flatnonzero(buf == 10)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(buf)]))
    if len(starts) and starts[-1] == len(buf):  # nothing after the final newline
        starts, ends = starts[:-1], ends[:-1]
    lengths = ends - starts
    first = buf[np.minimum(starts, max(len(buf) - 1, 0))] if len(buf) else lengths
    blank = (lengths == 0) | ((lengths == 1) & (first == 13))
    rows = np.flatnonzero(~blank)
    return rows.astype(np.int64) if len(rows) == num_rows else None


def _parse_jsonl_lines(
    source: Source, body: bytes, line0: int, opts: ReadOptions
) -> tuple[pa.Table, np.ndarray]:
    records: list[dict[str, Any]] = []
    positions: list[int] = []
    for i, line in enumerate(body.split(b"\n")):
        if not line.strip():
            continue
        pos = line0 + i
        record = _decode_record(source, pos, line, opts)
        if record is not None:
            records.append(record)
            positions.append(pos)
    try:
        table = pa.Table.from_pylist(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(
            f"{source.where(positions[0])}..{positions[-1] + 1}: fields change type between "
            f"records ({exc}); make each field's type consistent"
        ) from exc
    return table, np.asarray(positions, dtype=np.int64)


def _decode_record(
    source: Source, pos: int, line: bytes, opts: ReadOptions
) -> dict[str, Any] | None:
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return bad_record(source, pos, f"invalid UTF-8 (byte {exc.start} of the line)", opts)
    except json.JSONDecodeError as exc:
        problem = f"truncated or invalid JSON ({exc.msg}, column {exc.colno})"
        return bad_record(source, pos, problem, opts)
    if not isinstance(record, dict):
        return bad_record(source, pos, f"expected a JSON object, got {type(record).__name__}", opts)
    text = record.get(opts.text_field)
    if text is None:
        fields = ", ".join(sorted(record)) or "none"
        return bad_record(
            source,
            pos,
            f"no {opts.text_field!r} field (fields: {fields}); name the text field with "
            "--text-field",
            opts,
        )
    if not isinstance(text, str):
        return bad_record(source, pos, f"field {opts.text_field!r} is {_json_type(text)}, "
                    "expected a string", opts)
    return record


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", list: "a list",
             dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _numbered(
    source: Source, tables: Iterator[pa.Table], bytes_of: Callable[[pa.Table], int]
) -> Iterator[Chunk]:
    """Chunks whose positions are running row numbers of a table source."""
    row = 0
    for table in tables:
        yield Chunk(source, table, np.arange(row, row + table.num_rows, dtype=np.int64),
                    bytes_read=bytes_of(table))
        row += table.num_rows


def _read_parquet(source: Source, opts: ReadOptions) -> Iterator[Chunk]:
    assert source.path is not None
    try:
        handle = pq.ParquetFile(source.path)
    except (pa.ArrowInvalid, OSError) as exc:
        yield from _skip_file(source, f"not a readable Parquet file ({exc})", opts)
        return
    per_row = source.size / max(handle.metadata.num_rows, 1)
    yield from _numbered(source, _parquet_tables(source, handle, opts),
                         lambda t: int(per_row * t.num_rows))


def _parquet_tables(
    source: Source, handle: pq.ParquetFile, opts: ReadOptions
) -> Iterator[pa.Table]:
    row = 0
    batches = handle.iter_batches(batch_size=TABLE_BATCH_ROWS)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as exc:
            yield from _skip_file(source, f"corrupt Parquet data after row {row} ({exc})", opts)
            return
        row += batch.num_rows
        yield pa.Table.from_batches([batch])


def _skip_file(source: Source, problem: str, opts: ReadOptions) -> Iterator[Chunk]:
    if not opts.skip_bad_records:
        raise InputError(f"{source.label}: {problem}; replace the file or pass --skip-bad-records")
    source.stats["bad_files"] = source.stats.get("bad_files", 0) + 1
    yield from ()


def _read_csv(source: Source, opts: ReadOptions) -> Iterator[Chunk]:
    assert source.path is not None

    def on_invalid(row: pcsv.InvalidRow) -> str:
        if not opts.skip_bad_records:
            return "error"
        source.stats["bad_records"] += 1
        return "skip"

    delimiter = "\t" if ".tsv" in source.path.name.lower() else ","
    try:
        reader = pcsv.open_csv(
            source.path,
            read_options=pcsv.ReadOptions(block_size=BLOCK_BYTES // 4),
            parse_options=pcsv.ParseOptions(
                delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid
            ),
            convert_options=pcsv.ConvertOptions(column_types={opts.text_field: pa.string()}),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{source.path}: cannot read CSV ({exc}); check the file") from exc
    # CSV offers no byte position: in-memory size approximates it; ingest tops up at the end
    yield from _numbered(source, _csv_tables(source, reader), lambda t: t.nbytes)


def _csv_tables(source: Source, reader: pcsv.CSVStreamingReader) -> Iterator[pa.Table]:
    row = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(
                f"{source.path} after row {row}: {exc}; fix the file or pass --skip-bad-records"
            ) from exc
        row += batch.num_rows
        yield pa.Table.from_batches([batch])


def _read_hf(source: Source, opts: ReadOptions) -> Iterator[Chunk]:
    if source.dataset is None:
        import datasets

        assert source.path is not None
        loaded = datasets.load_from_disk(str(source.path))
        if isinstance(loaded, datasets.DatasetDict):
            for split, ds in loaded.items():
                sub = Source("hf", f"{source.key}/{split}", source.default_domain,
                             dataset=ds, stats=source.stats)
                yield from _read_hf(sub, opts)
            return
        source.dataset = loaded
    per_row = max(source.size, 1) / max(len(source.dataset), 1)
    # The arrow format honours any indices mapping (select/shuffle) without copying the data.
    tables = source.dataset.with_format("arrow").iter(batch_size=TABLE_BATCH_ROWS)
    yield from _numbered(source, tables, lambda t: int(per_row * t.num_rows))


def _read_text_files(source: Source, opts: ReadOptions) -> Iterator[Chunk]:
    """One document per file; the domain is the first sub-folder (or the folder's own name)."""
    root = source.path
    assert root is not None
    files = source.files or [root]
    base = root if root.is_dir() else root.parent
    rows: dict[str, list[Any]] = {opts.text_field: [], "path": []}
    domains: list[str] = []
    ids: list[pa.Array] = []
    positions: list[int] = []
    size = 0
    for index, path in enumerate(files):
        rel = path.relative_to(base)
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            bad_record(source, index, f"{rel}: invalid UTF-8 at byte {exc.start}", opts)
            continue
        rows[opts.text_field].append(text)
        domains.append(rel.parts[0] if len(rel.parts) > 1 else source.default_domain)
        rows["path"].append(rel.as_posix())
        ids.append(make_ids(f"{base.name}/{rel.as_posix()}", np.zeros(1, np.int64)))
        positions.append(index)
        size += len(text)
        if size >= BLOCK_BYTES:
            yield _text_chunk(source, rows, domains, ids, positions, size)
            rows = {k: [] for k in rows}
            domains, ids, positions, size = [], [], [], 0
    if positions:
        yield _text_chunk(source, rows, domains, ids, positions, size)


def _text_chunk(
    source: Source,
    rows: dict[str, list[Any]],
    domains: list[str],
    ids: list[pa.Array],
    positions: list[int],
    size: int,
) -> Chunk:
    table = pa.table({k: pa.array(v, pa.string()) for k, v in rows.items()})
    return Chunk(source, table, np.asarray(positions, np.int64), ids=pa.concat_arrays(ids),
                 domains=pa.array(domains, pa.string()), bytes_read=size)


def check_text_field(source: Source, table: pa.Table, text_field: str) -> None:
    """Fail early, naming the fields seen, when a source has no text field at all."""
    if text_field not in table.column_names:
        raise SchemaError(
            f"{source.label}: no {text_field!r} field (fields: {', '.join(table.column_names)}); "
            "name the text field with --text-field"
        )
