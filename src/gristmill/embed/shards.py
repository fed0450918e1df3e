"""Embed one corpus shard into one `.npy` array, committed atomically.

A shard is the unit of work and of resume: its array is written under a temporary name,
fsynced and renamed, so after a crash an array either is complete or is not there. Inside a
shard, row groups are gathered into chunks of `chunk_rows` documents; each chunk is sorted by
token length and batched (see batching.py), and while the model embeds one chunk a background
thread reads and tokenizes the next.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from gristmill.embed.background import background
from gristmill.embed.engine import Encoder, NonFiniteEmbeddings, OnBatch
from gristmill.errors import InputError, ModelError
from gristmill.storage.schema import file_sha256

FP16_MAX = float(np.finfo(np.float16).max)
CHUNK_ROWS = 16384  # documents sorted together: padding gains flatten out well below this


@dataclass(frozen=True)
class ShardJob:
    """What a worker needs to embed one corpus shard (picklable, for worker processes)."""

    index: int
    corpus_path: str  # the Parquet shard
    npy_path: str  # final array path (in the run's working directory)
    rows: int  # rows in the corpus shard
    offset: int  # global row of its first row
    stat: tuple[int, int]  # (size, mtime_ns) of the corpus shard when the run planned it
    selected: np.ndarray | None = None  # local rows to embed; None embeds every row


def embed_shard(encoder: Encoder, job: ShardJob, *, batch_tokens: int | None,
                chunk_rows: int = CHUNK_ROWS, on_batch: OnBatch | None = None) -> dict[str, Any]:
    """Embed `job`'s rows into `job.npy_path`; returns the shard's manifest record."""
    final = Path(job.npy_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".partial")
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                      shape=(job.rows, encoder.spec.dim))
    if job.selected is not None:
        array[:] = np.nan  # rows outside the selection are not embeddings
    tokens = truncated = 0
    chunks = ((rows, ids, encoder.tokenize(texts))
              for rows, ids, texts in _read_chunks(job, chunk_rows))
    for rows, ids, tokenized in background(chunks, depth=1):
        vectors = _embed_chunk(encoder, job, rows, ids, tokenized, batch_tokens, on_batch)
        array[rows] = vectors.astype(np.float16)
        tokens += int(tokenized.lengths.sum())
        truncated += int(tokenized.truncated.sum())
    array.flush()
    del array
    _check_unchanged(job)
    _fsync(tmp)
    os.replace(tmp, final)
    embedded = job.rows if job.selected is None else len(job.selected)
    return {"rows": job.rows, "embedded": embedded, "tokens": tokens,
            "truncated": truncated, "bytes": final.stat().st_size, "sha256": file_sha256(final)}


def _embed_chunk(encoder: Encoder, job: ShardJob, rows: np.ndarray, ids: list[str],
                 tokenized: Any, batch_tokens: int | None, on_batch: OnBatch | None
                 ) -> np.ndarray:
    try:
        vectors = encoder.embed(tokenized, batch_tokens=batch_tokens, on_batch=on_batch)
    except NonFiniteEmbeddings as exc:
        raise ModelError(f"{job.corpus_path}: {_name_rows(job, rows, ids, exc.positions)}: "
                         f"{exc}") from None
    too_big = np.flatnonzero(np.abs(vectors).max(axis=1) > FP16_MAX) if len(vectors) else []
    if len(too_big):
        raise ModelError(
            f"{job.corpus_path}: {_name_rows(job, rows, ids, too_big)}: embedding values "
            f"exceed the float16 range of the store ({FP16_MAX:.0f}); use --normalize")
    return vectors


def _name_rows(job: ShardJob, rows: np.ndarray, ids: list[str], positions: Any) -> str:
    shown = [f"{job.offset + int(rows[p])} (id {ids[p]})" for p in list(positions)[:3]]
    more = f" and {len(positions) - 3} more" if len(positions) > 3 else ""
    return f"rows {', '.join(shown)}{more}"


def _read_chunks(job: ShardJob, chunk_rows: int) -> Iterator[tuple[np.ndarray, list[str],
                                                                   list[str]]]:
    """Yield (local rows, ids, texts) in row order, about `chunk_rows` documents at a time."""
    handle = pq.ParquetFile(job.corpus_path)
    rows: list[np.ndarray] = []
    ids: list[str] = []
    texts: list[str] = []
    start = 0
    for group in range(handle.num_row_groups):
        table = handle.read_row_group(group, columns=["id", "text"])
        local = np.arange(start, start + table.num_rows)
        start += table.num_rows
        if job.selected is not None:
            keep = np.isin(local, job.selected, assume_unique=True)
            table, local = table.filter(keep), local[keep]
        rows.append(local)
        ids += table.column("id").to_pylist()
        texts += table.column("text").to_pylist()
        if len(texts) >= chunk_rows:
            yield np.concatenate(rows), ids, texts
            rows, ids, texts = [], [], []
    if texts:
        yield np.concatenate(rows), ids, texts


def _check_unchanged(job: ShardJob) -> None:
    info = os.stat(job.corpus_path)
    if (info.st_size, info.st_mtime_ns) != job.stat:
        raise InputError(
            f"{job.corpus_path}: the corpus shard changed while it was being embedded; refusing "
            "to mix embeddings of two versions of the corpus: re-run when the corpus is final")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
