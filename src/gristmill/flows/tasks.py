"""Prefect tasks around the stage functions, cached by content.

Cache keys are built from what a stage reads, never by hashing data in memory: the input
stores' manifest fingerprints (for raw inputs, each file's path, size and mtime), the stage's
parameters and the gristmill version. A task whose output directory has gone missing refreshes
its cache entry and runs again. Retries with exponential backoff cover I/O errors only
(`OSError` that is not a gristmill error): a bad option fails at once.

Every task returns its output directory as a string; the stage functions underneath reuse an
output that is already up to date and write atomically, so a failed run leaves the stores that
finished intact and nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.tasks import exponential_backoff

from gristmill.errors import ConfigError, GristmillError
from gristmill.storage.schema import MANIFEST_NAME, gristmill_version

RETRIES = 2


def _io_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only I/O trouble (a full disk, a flaky network filesystem), not bad input."""
    try:
        state.result()
    except GristmillError:
        return False
    except OSError:
        return True
    except Exception:  # noqa: BLE001 - anything else is a bug or bad input: fail now
        return False
    return False


def raw_inputs_digest(inputs: list[str]) -> str:
    """sha256 over (path, size, mtime) of every file under the inputs (globs expanded)."""
    import glob

    digest = hashlib.sha256()
    for spec in inputs:
        matches = sorted(glob.glob(spec)) or [spec]
        for match in matches:
            path = Path(match)
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() \
                else [path]
            for file in files:
                stat = file.stat() if file.exists() else None
                digest.update(f"{file}\0{stat.st_size if stat else -1}\0"
                              f"{stat.st_mtime_ns if stat else -1}\n".encode())
    return digest.hexdigest()[:16]


def store_fingerprint(path: str | Path | None) -> str:
    """A store's manifest fingerprint (or a hash of its manifest), 'none' for None."""
    if path is None:
        return "none"
    manifest = Path(path) / MANIFEST_NAME
    if not manifest.is_file():
        for name in ("gristmill_tokenizer.json", "tokenizer.json"):  # a tokenizer directory
            if (Path(path) / name).is_file():
                return hashlib.sha256((Path(path) / name).read_bytes()).hexdigest()[:16]
        return f"missing:{path}"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    return str(data.get("fingerprint") or hashlib.sha256(manifest.read_bytes()).hexdigest()[:16])


def cache_key(stage: str, parameters: dict[str, Any]) -> str:
    """Key = stage + content of the inputs + parameters + gristmill version."""
    parts = {"stage": stage, "version": gristmill_version()}
    for name, value in sorted(parameters.items()):
        if name == "inputs":
            parts[name] = raw_inputs_digest(value)
        elif name in ("corpus", "embeddings", "clusters", "pool", "selection", "tokenizer") \
                and value is not None and (Path(str(value)).exists()):
            parts[name] = store_fingerprint(value)
        else:
            parts[name] = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _key_fn(stage: str):
    def key(context: Any, parameters: dict[str, Any]) -> str:
        return cache_key(stage, parameters)

    key.__name__ = f"{stage}_cache_key"
    return key


def _task(stage: str, **kwargs: Any):
    return task(name=stage, cache_key_fn=_key_fn(stage), persist_result=True,
                retries=RETRIES, retry_delay_seconds=exponential_backoff(backoff_factor=2),
                retry_condition_fn=_io_error, **kwargs)


def reusing(fn: Any, out: Path, **kwargs: Any) -> Any:
    """Call a stage reusing an up-to-date `out`; replace it when it holds other settings."""
    try:
        return fn(out=out, **kwargs)
    except ConfigError as exc:
        if "already exists" not in str(exc):
            raise
        return fn(out=out, overwrite=True, **{k: v for k, v in kwargs.items() if k != "reuse"})


def input_columns(inputs: list[str]) -> set[str]:
    """Column names of the first Parquet or JSONL file among the inputs (empty if none)."""
    import glob

    import pyarrow.parquet as pq

    for spec in inputs:
        for match in sorted(glob.glob(spec)) or [spec]:
            path = Path(match)
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() \
                else [path]
            for file in files:
                if file.suffix == ".parquet":
                    return set(pq.read_schema(file).names)
                if file.suffix == ".jsonl":
                    with open(file, encoding="utf-8") as handle:
                        line = handle.readline()
                    try:
                        return set(json.loads(line))
                    except (ValueError, TypeError):
                        return set()
    return set()


def resolve_ingest_options(inputs: list[str], options: dict[str, Any]) -> dict[str, Any]:
    """Turn `auto` domain/id fields into the input's `domain` / `id` columns, or None."""
    options = dict(options)
    columns = None
    for key, column in (("domain_field", "domain"), ("id_field", "id")):
        if options.get(key) == "auto":
            columns = input_columns(inputs) if columns is None else columns
            options[key] = column if column in columns else None
    if options.get("domain") is not None:
        options["domain_field"] = None
    return {k: v for k, v in options.items() if v is not None}


@_task("ingest")
def ingest_task(inputs: list[str], out: str, options: dict[str, Any]) -> str:
    from gristmill.storage import ingest

    options = resolve_ingest_options(inputs, options)

    def run(out: Path, overwrite: bool = False, **kw: Any) -> Any:
        return ingest(inputs, out, overwrite=overwrite, **kw)

    store = reusing(run, Path(out), reuse=True, **options)
    return str(store.path)


@_task("embed")
def embed_task(corpus: str, out: str, model: str | None, options: dict[str, Any]) -> str:
    from gristmill.embed import embed_store

    result = embed_store(corpus, out, model=model, **options)
    return str(result.store.path)


@_task("embed-shard")
def embed_shard_task(corpus: str, out: str, model: str | None, options: dict[str, Any],
                     shard: int) -> str:
    """Embed one corpus shard into the prepared partial run (mapped over shards)."""
    from gristmill.embed import embed_store

    embed_store(corpus, out, model=model, shards=[shard], **options)
    return f"{out}#shard{shard}"


def prepare_embedding(corpus: str, out: str, model: str | None,
                      options: dict[str, Any]) -> int:
    """Create (or check) the resumable partial run the shard tasks write into; shard count."""
    from gristmill.embed import embed_store
    from gristmill.storage.corpus import CorpusStore

    embed_store(corpus, out, model=model, shards=[], **options)
    return len(CorpusStore.open(corpus).shards)


@_task("cluster")
def cluster_task(embeddings: str, out: str, k: str | int, seed: int,
                 options: dict[str, Any]) -> str:
    from gristmill.selectors.clustering import cluster_embeddings

    result = cluster_embeddings(embeddings, out, k=k, seed=seed, **options)
    return str(result.store.path)


@_task("select")
def select_task(method: str, corpus: str, embeddings: str, clusters: str | None,
                pool: str | None, out: str, budget: str | None, seed: int,
                params: dict[str, Any]) -> str:
    from gristmill.selectors.run import run_selection

    def run(out: Path, overwrite: bool = False, reuse: bool = False) -> Any:
        return run_selection(method, corpus=corpus, embeddings=embeddings, clusters=clusters,
                             pool=pool, out=out, budget=budget, seed=seed, params=params,
                             overwrite=overwrite, reuse=reuse)

    return str(reusing(run, Path(out), reuse=True).path)


#: Selectors whose work is independent per cluster (pairwise within a cluster): the curate
#: flow maps them over cluster groups, one task each, when they run by threshold (no budget).
PER_CLUSTER = {"semdedup"}


def cluster_groups(corpus: str, embeddings: str, clusters: str, pool: str | None,
                   groups: int) -> list[list[int]]:
    """Split the pool's clusters into at most `groups` groups of similar row counts."""
    from gristmill.selectors.pool import load_pool

    labels = load_pool(corpus, embeddings, clusters=clusters, pool=pool).labels
    assert labels is not None
    ids, sizes = np.unique(labels[labels >= 0], return_counts=True)
    bins: list[list[int]] = [[] for _ in range(max(1, min(groups, ids.size)))]
    load = np.zeros(len(bins), dtype=np.int64)
    for cid, size in sorted(zip(ids.tolist(), sizes.tolist(), strict=True),
                            key=lambda x: (-x[1], x[0])):
        b = int(np.argmin(load))
        bins[b].append(int(cid))
        load[b] += size
    return [sorted(b) for b in bins if b]


@_task("select-group")
def select_group_task(method: str, corpus: str, embeddings: str, clusters: str,
                      pool: str | None, group: list[int], seed: int,
                      params: dict[str, Any]) -> dict[str, Any]:
    """Run a per-cluster selector on the pool rows of some clusters (mapped over groups).

    Returns global corpus rows kept, and score / related row for each row of the group."""
    import dataclasses

    from gristmill.selectors import select
    from gristmill.selectors.pool import load_pool

    full = load_pool(corpus, embeddings, clusters=clusters, pool=pool)
    assert full.labels is not None
    positions = np.flatnonzero(np.isin(full.labels, np.asarray(group, dtype=np.int32)))
    sub = dataclasses.replace(
        full, rows=full.rows[positions], labels=full.labels[positions],
        dist=None if full.dist is None else full.dist[positions],
        domains=None if full.domains is None else full.domains[positions], source=None)
    result = select(method, sub, None, seed=seed, **params)
    related = result.related
    return {"rows": sub.rows.tolist(), "selected": sub.rows[result.selected].tolist(),
            "scores": result.scores.tolist(), "reason": result.reason,
            "related": None if related is None else [
                int(sub.rows[r]) if r >= 0 else -1 for r in related.tolist()],
            "params": result.params}


@_task("select-merge")
def merge_groups_task(method: str, corpus: str, embeddings: str, clusters: str,
                      pool: str | None, out: str, seed: int, params: dict[str, Any],
                      parts: list[dict[str, Any]]) -> str:
    """Write the cluster groups' answers as one selection store, as a single run would."""
    from gristmill.selectors.output import write_selection
    from gristmill.selectors.pool import load_pool
    from gristmill.selectors.result import SelectionResult

    full = load_pool(corpus, embeddings, clusters=clusters, pool=pool)
    index = {int(r): i for i, r in enumerate(full.rows.tolist())}
    scores = np.full(full.size, np.nan, dtype=np.float32)
    related = np.full(full.size, -1, dtype=np.int64)
    kept: list[int] = []
    for part in parts:
        at = np.array([index[r] for r in part["rows"]], dtype=np.int64)
        scores[at] = np.asarray(part["scores"], dtype=np.float32)
        if part["related"] is not None:
            related[at] = [index[r] if r >= 0 else -1 for r in part["related"]]
        kept += [index[r] for r in part["selected"]]
    result = SelectionResult(selected=np.unique(np.asarray(kept, dtype=np.int64)),
                             scores=scores, reason=parts[0]["reason"] if parts else
                             "near_duplicate", related=related,
                             params={**(parts[0]["params"] if parts else {}),
                                     "cluster_groups": len(parts)},
                             stats={"cluster_groups": len(parts)})
    written = write_selection(Path(out), full, result, method=method, budget=None, seed=seed,
                              overwrite=Path(out).exists())
    return str(written.path)


@_task("tokenizer")
def tokenizer_task(corpus: str, out: str, vocab_size: int, min_frequency: int) -> str:
    from gristmill.packing import train_tokenizer

    def run(out: Path, overwrite: bool = False, reuse: bool = False) -> Any:
        return train_tokenizer(corpus, out, vocab_size=vocab_size, min_frequency=min_frequency,
                               overwrite=overwrite, reuse=reuse)

    return str(reusing(run, Path(out), reuse=True))


@_task("tokenize")
def tokenize_task(corpus: str, out: str, tokenizer: str, selection: str | None) -> str:
    from gristmill.packing import tokenize_store

    def run(out: Path, overwrite: bool = False, reuse: bool = False) -> Any:
        return tokenize_store(corpus, out, tokenizer=tokenizer, selection=selection,
                              overwrite=overwrite, reuse=reuse)

    return str(reusing(run, Path(out), reuse=True).store.path)


def output_missing(out: str | Path) -> bool:
    """True when a task's output is gone (then its cache entry is refreshed)."""
    path = Path(out)
    return not ((path / MANIFEST_NAME).is_file() or (path / "tokenizer.json").is_file())

