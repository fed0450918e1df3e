"""Turn a raw input chunk into the corpus schema: id, text, domain, n_chars, then extras.

Checks every record on the way (missing or non-string text, invalid UTF-8, null ids or
domains) and drops empty or whitespace-only documents unless asked to keep them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gristmill.errors import SchemaError
from gristmill.storage.ids import make_ids
from gristmill.storage.schema import CORE_COLUMNS, CORE_TYPES, DOMAIN, ID, N_CHARS, TEXT
from gristmill.storage.sources import Chunk, ReadOptions, Source, bad_record, check_text_field

RESERVED = set(CORE_COLUMNS)


@dataclass(frozen=True)
class FieldMap:
    """Which input fields become `text`, `id` and `domain` (None: generate or default)."""

    text_field: str = "text"
    id_field: str | None = None
    domain_field: str | None = None
    domain: str | None = None
    keep_empty: bool = False
    skip_bad_records: bool = False


@dataclass
class Normalizer:
    """Normalizes chunks to one schema fixed by the first chunk's extra columns.

    Later chunks are made to fit: missing extras become nulls, extras of another type are cast,
    and columns the first chunk did not have are dropped and listed in `dropped_columns`.
    """

    fields: FieldMap
    schema: pa.Schema | None = None
    dropped_columns: dict[str, str] = field(default_factory=dict)
    empty_dropped: int = 0

    def __call__(self, chunk: Chunk) -> tuple[pa.Table, np.ndarray, bool]:
        """Returns the normalized table, the source position of each of its rows, and whether
        its ids came from the input."""
        keep = self._valid_rows(chunk)
        table, positions = _filter_rows(chunk.table, chunk.positions, keep)
        text = _as_text(chunk.source, table.column(self.fields.text_field), positions,
                        checked=chunk.utf8_checked)
        ids, from_input = self._ids(chunk, table, positions, keep)
        domains = self._domains(chunk, table, positions, keep)
        core = {ID: ids, TEXT: text, DOMAIN: domains,
                N_CHARS: pc.utf8_length(text).cast(pa.int32())}
        used = {self.fields.text_field, self.fields.id_field, self.fields.domain_field}
        extras = {n: table.column(n) for n in table.column_names if n not in used}
        clash = sorted(set(extras) & RESERVED)
        if clash:
            raise SchemaError(
                f"{chunk.source.label}: input column {clash[0]!r} clashes with a store column; "
                f"rename it, or map it with --{clash[0].replace('_', '-')}-field"
            )
        out = self._fit(pa.table({**core, **extras}))
        if self.fields.keep_empty:
            return out, positions, from_input
        # No trimmed copy of every text: empty, or nothing but Unicode whitespace.
        text = out.column(TEXT)
        empty = pc.or_(pc.equal(pc.binary_length(text), 0), pc.utf8_is_space(text))
        count = pc.sum(empty).as_py() or 0
        if not count:
            return out, positions, from_input
        self.empty_dropped += count
        return *_filter_rows(out, positions, pc.invert(empty)), from_input

    def _valid_rows(self, chunk: Chunk) -> pa.Array | None:
        """A mask of rows with usable text; bad rows raise, or count with --skip-bad-records."""
        check_text_field(chunk.source, chunk.table, self.fields.text_field)
        column = chunk.table.column(self.fields.text_field)
        opts = ReadOptions(self.fields.text_field, self.fields.skip_bad_records)
        if not _is_stringish(column.type):
            bad_record(chunk.source, int(chunk.positions[0]),
                 f"field {self.fields.text_field!r} holds {column.type}, expected a string", opts)
            return pa.array(np.zeros(chunk.table.num_rows, bool))
        nulls = column.is_null()
        if not pc.any(nulls).as_py():
            return None
        if column.null_count == len(column) and not self.fields.skip_bad_records:
            # Arrow's JSON reader adds the (explicitly typed) text column even when no record
            # has it: report the fields the records do have.
            seen = [n for n in chunk.table.column_names if n != self.fields.text_field
                    and chunk.table.column(n).null_count < len(column)]
            raise SchemaError(
                f"{chunk.source.where(int(chunk.positions[0]))}: no {self.fields.text_field!r} "
                f"field (fields: {', '.join(seen) or 'none'}); name the text field with "
                "--text-field"
            )
        for index in np.flatnonzero(nulls.to_numpy(zero_copy_only=False)):
            bad_record(chunk.source, int(chunk.positions[index]),
                 f"no {self.fields.text_field!r} field (null or missing); name the text field "
                 "with --text-field", opts)
        return pc.invert(nulls)

    def _ids(
        self, chunk: Chunk, table: pa.Table, positions: np.ndarray, keep: pa.Array | None
    ) -> tuple[pa.Array, bool]:
        if self.fields.id_field is not None:
            return _string_field(chunk.source, table, positions, self.fields.id_field, "id",
                                 "fix --id-field or leave it out"), True
        if chunk.ids is not None:
            return chunk.ids.filter(keep) if keep is not None else chunk.ids, False
        return make_ids(chunk.source.key, positions), False

    def _domains(
        self, chunk: Chunk, table: pa.Table, positions: np.ndarray, keep: pa.Array | None
    ) -> pa.Array:
        if self.fields.domain_field is not None:
            values = _string_field(chunk.source, table, positions, self.fields.domain_field,
                                   "domain", "fix --domain-field or use --domain NAME")
        elif self.fields.domain is not None:
            values = pa.array(np.full(table.num_rows, self.fields.domain, dtype=object),
                              pa.string())
        elif chunk.domains is not None:
            values = chunk.domains.filter(keep) if keep is not None else chunk.domains
        else:
            values = pa.array(np.full(table.num_rows, chunk.source.default_domain, dtype=object),
                              pa.string())
        return values.dictionary_encode().cast(CORE_TYPES[DOMAIN])

    def _fit(self, table: pa.Table) -> pa.Table:
        if self.schema is None:
            fields = [pa.field(n, CORE_TYPES[n]) for n in CORE_COLUMNS]
            for f in table.schema:
                if f.name not in RESERVED:
                    kind = pa.string() if pa.types.is_null(f.type) else f.type
                    fields.append(pa.field(f.name, kind))
            self.schema = pa.schema(fields)
        columns: list[Any] = []
        for f in self.schema:
            if f.name not in table.column_names:
                columns.append(pa.nulls(table.num_rows, f.type))
                continue
            column = table.column(f.name)
            try:
                columns.append(column if column.type == f.type else pc.cast(column, f.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                self.dropped_columns[f.name] = f"cannot cast {column.type} to {f.type}"
                columns.append(pa.nulls(table.num_rows, f.type))
        for name in set(table.column_names) - set(self.schema.names):
            self.dropped_columns.setdefault(name, "not in the first records read")
        return pa.Table.from_arrays(columns, schema=self.schema)


def _filter_rows(
    table: pa.Table, positions: np.ndarray, mask: pa.Array | None
) -> tuple[pa.Table, np.ndarray]:
    """Keep the rows where `mask` is true, in the table and its positions alike."""
    if mask is None:
        return table, positions
    return table.filter(mask), positions[mask.to_numpy(zero_copy_only=False)]


def _is_stringish(kind: pa.DataType) -> bool:
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_binary(kind) or pa.types.is_large_binary(kind))


def _as_text(
    source: Source, column: pa.ChunkedArray, positions: np.ndarray, *, checked: bool
) -> pa.Array:
    """Cast to large_string, checking UTF-8 unless the reader did; names the first bad row."""
    try:
        text = pc.cast(column, pa.large_string()).combine_chunks()
        if not checked:
            text.validate(full=True)
        return text
    except pa.ArrowInvalid:
        for index, value in enumerate(column.cast(pa.large_binary()).to_pylist()):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SchemaError(
                    f"{source.where(int(positions[index]))}: invalid UTF-8 at byte {exc.start} "
                    "of the text; re-encode the input as UTF-8"
                ) from exc
        raise


def _string_field(
    source: Source, table: pa.Table, positions: np.ndarray, name: str, what: str, remedy: str
) -> pa.Array:
    """Input field `name` as strings; it must exist and have no nulls."""
    if name not in table.column_names:
        raise SchemaError(
            f"{source.label}: no {what} field {name!r} (fields: "
            f"{', '.join(table.column_names)}); {remedy}"
        )
    column = table.column(name)
    nulls = column.is_null().to_numpy(zero_copy_only=False)
    if nulls.any():
        where = source.where(int(positions[int(np.argmax(nulls))]))
        raise SchemaError(f"{where}: the {what} is missing (null); every record needs one")
    return pc.cast(column, pa.string()).combine_chunks()
