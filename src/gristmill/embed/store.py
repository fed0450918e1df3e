"""`embed_store`: embed a corpus store into an embedding store, resumably.

A run works in `.EMB.partial/` beside the output. Each finished shard array is committed there
atomically and recorded in `progress.json`; the run ends by writing `manifest.json` and renaming
the directory to `EMB`, so `EMB` is always complete. A re-run after a crash or Ctrl-C finds the
partial directory, checks that the corpus and the settings are the ones it started with
(refusing to mix embeddings of two corpus versions or two models), and embeds only the shards
that are not finished. A re-run over a finished store with the same settings writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.embed.engine import resolve_device, resolve_dtype
from gristmill.embed.model import ModelSpec, resolve_model
from gristmill.embed.progress import EmbedProgress
from gristmill.embed.shards import CHUNK_ROWS, ShardJob
from gristmill.embed.workers import run_jobs
from gristmill.errors import ConfigError, CorruptStoreError, InputError
from gristmill.storage.atomic import atomic_directory
from gristmill.storage.corpus import CorpusStore
from gristmill.storage.embeddings import KIND, EmbeddingStore, npy_name
from gristmill.storage.schema import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    file_sha256,
    fingerprint,
    gristmill_version,
    now_iso,
    write_json,
)
from gristmill.storage.selection import SelectedRows, read_selection

log = logging.getLogger(__name__)
PROGRESS_NAME = "progress.json"
SHARD_RECORDS = "done"  # partial/done/<index>.json: one finished shard each


@dataclass
class EmbedResult:
    """What a run did: `status` is `written`, `resumed` or `up to date`."""

    store: EmbeddingStore
    status: str
    docs: int = 0  # documents embedded by this run
    tokens: int = 0
    truncated: int = 0
    seconds: float = 0.0
    devices: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.status == "up to date":
            return f"{self.store.path}: up to date ({self.store.manifest['embedded']:,} docs)"
        seconds = max(self.seconds, 1e-9)
        return (f"embedded {self.docs:,} docs ({self.tokens:,} tokens, {self.truncated:,} "
                f"truncated at {self.store.manifest['max_tokens']}) with "
                f"{self.store.manifest['model']} on {','.join(self.devices)} in "
                f"{self.seconds:.1f} s: {self.docs / seconds:,.1f} docs/s, "
                f"{self.tokens / seconds:,.0f} tokens/s -> {self.store.path} ({self.status})")


def embed_store(
    store: str | Path,
    out: str | Path,
    *,
    model: str | Path | None = None,
    pooling: str | None = None,
    max_tokens: int | None = None,
    normalize: bool | None = None,
    batch_tokens: int | None = None,
    device: str = "auto",
    devices: list[str] | None = None,
    dtype: str = "auto",
    selection: str | Path | None = None,
    overwrite: bool = False,
    compile_model: bool = False,
    progress: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    shards: list[int] | None = None,
) -> EmbedResult:
    """Embed every document of a corpus store (or of a selection) into `out`.

    Args:
        store: corpus store directory.
        out: embedding store directory: `<rel>/<stem>.npy` per corpus shard + manifest.json.
        model, pooling, max_tokens, normalize: see `resolve_model`; None takes the model's own.
        batch_tokens: padded tokens per batch (default 2,048 on CPU, 65,536 on GPU).
        device: auto, cpu, cuda or cuda:N, for one worker.
        devices: several devices, one worker process each (e.g. ["cuda:0", "cuda:1"]).
        dtype: auto (fp32 on CPU, fp16 on GPU), fp32, fp16 or bf16.
        selection: a selection directory; only its rows are embedded, the others hold NaN.
        overwrite: replace an existing output or abandon an unfinished run with other settings.
        shards: embed only these corpus shard indices into the resumable partial run and
            return with status "partial" (`store` None); a later call without `shards`
            embeds what is left and publishes. Distributed runners map shards this way
            (gristmill.flows); each shard records itself in its own file, so concurrent
            calls for different shards of one prepared run never overwrite each other.

    Example:
        >>> result = embed_store("out/corpus", "out/emb")   # doctest: +SKIP
        >>> result.store.dim, result.status                  # doctest: +SKIP
        (384, 'written')
    """
    corpus = CorpusStore.open(store)
    out = Path(out)
    run = _Run.plan(corpus, out, model, pooling, max_tokens, normalize, device, devices, dtype,
                    selection)
    if (done := _up_to_date(run, overwrite)) is not None:
        return done
    partial = out.parent / f".{out.name}.partial"
    records = _resume(run, partial, overwrite and shards is None)
    wanted = range(len(corpus.shards)) if shards is None else sorted(set(shards))
    bad = [i for i in wanted if not 0 <= i < len(corpus.shards)]
    if bad:
        raise ConfigError(f"shard {bad[0]} does not exist: {corpus.path} has "
                          f"{len(corpus.shards)} shards")
    jobs = [run.job(i, partial) for i in wanted if i not in records]
    started = time.perf_counter()
    totals = {"docs": 0, "tokens": 0, "truncated": 0}

    def on_done(index: int, record: dict[str, Any]) -> None:
        records[index] = {**run.names(index), **record}
        for key in ("tokens", "truncated"):
            totals[key] += record[key]
        totals["docs"] += record["embedded"]
        write_json(partial / SHARD_RECORDS / f"{index}.json", records[index])
        if shards is None:
            _save_progress(partial, run.progress(records))

    try:
        with EmbedProgress(sum(j.rows if j.selected is None else len(j.selected)
                               for j in jobs), enabled=progress) as bar:
            run_jobs(run.spec, jobs, devices=run.devices, dtype=run.dtype,
                     batch_tokens=batch_tokens, chunk_rows=chunk_rows,
                     compile_model=compile_model, on_batch=bar.advance, on_done=on_done)
    except Exception:
        # Keep finished shards for a resume; with none, leave nothing behind.
        if not records and shards is None:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    if shards is not None:
        return EmbedResult(None, "partial", seconds=seconds,  # type: ignore[arg-type]
                           devices=run.devices, **totals)
    _publish(run, partial, records, overwrite or out.exists(),
             {"seconds": round(seconds, 3), "devices": run.devices, **totals})
    return EmbedResult(EmbeddingStore.open(out), "resumed" if len(jobs) < len(corpus.shards)
                       else "written", seconds=seconds, devices=run.devices, **totals)


@dataclass
class _Run:
    """A planned run: corpus, output, resolved model settings and devices."""

    corpus: CorpusStore
    out: Path
    spec: ModelSpec
    dtype: str
    devices: list[str]
    selected: SelectedRows | None
    settings: dict[str, Any]

    @classmethod
    def plan(cls, corpus: CorpusStore, out: Path, model: str | Path | None, pooling: str | None,
             max_tokens: int | None, normalize: bool | None, device: str,
             devices: list[str] | None, dtype: str, selection: str | Path | None) -> _Run:
        if corpus.num_rows == 0:
            raise InputError(f"{corpus.path}: the corpus has no documents to embed")
        chosen = [str(resolve_device(d)) for d in (devices or [device])]
        if len({d.split(":")[0] for d in chosen}) > 1:
            raise ConfigError(f"--devices {','.join(chosen)} mixes CPU and GPU; use one kind")
        compute = resolve_dtype(dtype, resolve_device(chosen[0]))
        spec = resolve_model(model, pooling=pooling, max_tokens=max_tokens, normalize=normalize)
        selected = read_selection(selection, corpus=corpus) if selection is not None else None
        if selected is not None and len(selected.rows) == 0:
            raise InputError(f"{selected.path}: the selection holds no rows to embed")
        settings = {"model": spec.name, "model_revision": spec.revision,
                    "pooling": spec.pooling, "normalized": spec.normalize,
                    "max_tokens": spec.max_tokens, "compute_dtype": compute,
                    "selection_fingerprint": selected.fingerprint if selected else None}
        return cls(corpus, out, spec, compute, chosen, selected, settings)

    @property
    def key(self) -> str:
        """Settings that change values; the model's name is left out, its revision is in."""
        return fingerprint([f"{k}={v}" for k, v in self.settings.items() if k != "model"])

    def names(self, index: int) -> dict[str, str]:
        shard = self.corpus.shards[index].path.relative_to(self.corpus.path).as_posix()
        return {"path": npy_name(shard), "corpus_shard": shard}

    def job(self, index: int, partial: Path) -> ShardJob:
        shard = self.corpus.shards[index]
        info = shard.path.stat()
        selected = None
        if self.selected is not None:
            rows = self.selected.rows
            selected = rows[(rows >= shard.offset) & (rows < shard.offset + shard.rows)]
            selected = (selected - shard.offset).astype(np.int64)
        return ShardJob(index, str(shard.path), str(partial / self.names(index)["path"]),
                        shard.rows, shard.offset, (info.st_size, info.st_mtime_ns), selected)

    def progress(self, records: dict[int, dict[str, Any]]) -> dict[str, Any]:
        return {"key": self.key, "settings": self.settings,
                "corpus_fingerprint": self.corpus.fingerprint,
                "shards": {str(i): r for i, r in sorted(records.items())}}


def _up_to_date(run: _Run, overwrite: bool) -> EmbedResult | None:
    """The finished store when it matches this run; refuse a mismatch without `overwrite`."""
    if not run.out.exists() or overwrite:
        return None
    try:
        existing = EmbeddingStore.open(run.out)
    except CorruptStoreError as exc:
        raise ConfigError(f"{run.out}: exists but is not a usable embedding store ({exc}); "
                          "pass --overwrite to replace it or choose another --out") from None
    old = existing.manifest
    if old.get("settings_key") == run.key and \
            old["corpus"]["fingerprint"] == run.corpus.fingerprint:
        return EmbedResult(existing, "up to date", devices=run.devices)
    raise ConfigError(f"{run.out}: holds embeddings that disagree with this run: "
                      f"{_differences(old, run)}; pass --overwrite to replace them or choose "
                      "another --out")


def _differences(old: dict[str, Any], run: _Run) -> str:
    diffs = [f"{key} {old.get(key)!r} there vs {value!r} now" for key, value in
             run.settings.items() if old.get(key) != value]
    if old["corpus"]["fingerprint"] != run.corpus.fingerprint:
        diffs.append(f"corpus fingerprint {old['corpus']['fingerprint']} there vs "
                     f"{run.corpus.fingerprint} now")
    return "; ".join(diffs)


def _resume(run: _Run, partial: Path, overwrite: bool) -> dict[int, dict[str, Any]]:
    """Finished shard records of an interrupted run of these same settings and corpus.

    An unfinished run of other settings or of another corpus version is refused (never mixed
    in) unless `overwrite`, which discards it; a matching one is resumed even with `overwrite`.
    """
    saved = _read_progress(partial)
    if saved is not None and (mismatch := _mismatch(run, partial, saved)) is not None:
        if not overwrite:
            raise mismatch
        saved = None
    if saved is None:
        shutil.rmtree(partial, ignore_errors=True)
        (partial / SHARD_RECORDS).mkdir(parents=True)
        _save_progress(partial, run.progress({}))
        return {}
    found = dict(saved["shards"])
    for file in sorted((partial / SHARD_RECORDS).glob("*.json")):
        try:
            found.setdefault(file.stem, json.loads(file.read_text()))
        except (OSError, json.JSONDecodeError):
            continue  # a record cut short by a crash: that shard is embedded again
    (partial / SHARD_RECORDS).mkdir(exist_ok=True)
    records = {int(i): r for i, r in found.items() if _intact(partial / r["path"], r)}
    log.info("resuming %s: %d of %d shards already embedded", run.out, len(records),
             len(run.corpus.shards))
    return records


def _read_progress(partial: Path) -> dict[str, Any] | None:
    try:
        return json.loads((partial / PROGRESS_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _mismatch(run: _Run, partial: Path, saved: dict[str, Any]) -> Exception | None:
    if saved["corpus_fingerprint"] != run.corpus.fingerprint:
        return InputError(
            f"{run.corpus.path} changed after embedding began (fingerprint "
            f"{saved['corpus_fingerprint']} then, {run.corpus.fingerprint} now): the "
            f"{len(saved['shards'])} finished shard(s) in {partial} belong to the old corpus and "
            "will not be mixed with new ones; pass --overwrite to start over")
    if saved["key"] != run.key:
        changed = [f"{k} {v!r}" for k, v in saved["settings"].items() if run.settings[k] != v]
        return ConfigError(f"{partial}: an unfinished run with other settings "
                           f"({', '.join(changed)}) is there; re-run with those settings to "
                           "resume it, or pass --overwrite to discard it")
    return None


def _save_progress(partial: Path, progress: dict[str, Any]) -> None:
    """Replace progress.json atomically: a kill mid-write leaves the previous version."""
    tmp = partial / f"{PROGRESS_NAME}.tmp"
    write_json(tmp, progress)
    os.replace(tmp, partial / PROGRESS_NAME)


def _intact(path: Path, record: dict[str, Any]) -> bool:
    return path.is_file() and path.stat().st_size == record["bytes"] and \
        file_sha256(path) == record["sha256"]


def _publish(run: _Run, partial: Path, records: dict[int, dict[str, Any]], replace: bool,
             stats: dict[str, Any]) -> None:
    """Write the manifest and move the finished run into place."""
    shards = [records[i] for i in range(len(run.corpus.shards))]
    (partial / PROGRESS_NAME).unlink()
    shutil.rmtree(partial / SHARD_RECORDS, ignore_errors=True)
    write_json(partial / MANIFEST_NAME, {
        "kind": KIND, "format_version": FORMAT_VERSION,
        "gristmill_version": gristmill_version(), "created": now_iso(),
        "rows": run.corpus.num_rows, "embedded": sum(s["embedded"] for s in shards),
        "dim": run.spec.dim, "dtype": "float16", **run.settings,
        "model_path": run.spec.path, "lowercase": run.spec.lowercase,
        "is_decoder": run.spec.is_decoder,
        "truncated": sum(s["truncated"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards),
        "corpus_fingerprint": run.corpus.fingerprint,
        "corpus": {"path": str(run.corpus.path), "fingerprint": run.corpus.fingerprint,
                   "rows": run.corpus.num_rows},
        "selection": run.selected.describe() if run.selected is not None else None,
        "settings_key": run.key,
        "fingerprint": fingerprint([run.key] + [s["sha256"] for s in shards]),
        "last_run": stats,
        "shards": shards,
    })
    with atomic_directory(run.out, overwrite=replace) as tmp:
        tmp.rmdir()
        partial.rename(tmp)
