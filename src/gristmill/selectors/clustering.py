"""FAISS k-means over an embedding store: a seeded training sample, then streamed assignment.

FAISS trains on at most `k * max_points_per_centroid` points and only warns when it subsamples
(ALGORITHMS.md section 0). We make that explicit: the training sample is drawn here, seeded,
`sample_per_centroid * k` rows at most, and its size goes in the manifest; FAISS is then told
not to subsample again. Every row is assigned afterwards in chunks of `CHUNK_ROWS` read from the
memory-mapped shards, so the store is never in RAM as float32 at once.

Spherical k-means (the default) renormalises centroids each iteration and assigns by inner
product, so `dist` holds the cosine *similarity* to the centroid (larger is closer); otherwise
`dist` is the squared L2 distance (smaller is closer). The manifest says which (`dist`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gristmill.errors import ConfigError, GristmillError, InputError
from gristmill.plots import plot_cluster_sizes, preload_pyplot
from gristmill.storage.atomic import atomic_directory
from gristmill.storage.clusters import (
    CENTROIDS,
    COSINE_SIMILARITY,
    KIND,
    SQUARED_L2,
    ClusterStore,
)
from gristmill.storage.embeddings import EmbeddingStore
from gristmill.storage.schema import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    file_sha256,
    fingerprint,
    gristmill_version,
    now_iso,
    write_json,
)

log = logging.getLogger(__name__)
CHUNK_ROWS = 65_536
MIN_POINTS_PER_CENTROID = 39  # FAISS's own threshold for a warning
K_AUTO_RANGE = (8, 65_536)
#: Dense pairwise work on one cluster beyond this is flagged (SemDeDup chunks it anyway).
DENSE_PAIRWISE_WARN_BYTES = 4 << 30


@dataclass(frozen=True)
class ClusterResult:
    """What `cluster_embeddings` did: `status` is `written` or `up to date`."""

    store: ClusterStore
    status: str
    seconds: float = 0.0

    def summary(self) -> str:
        m = self.store.manifest
        if self.status == "up to date":
            return f"{self.store.path}: up to date (k={m['k']})"
        return (f"clustered {m['clustered_rows']:,} rows into k={m['k']} "
                f"({'spherical' if m['spherical'] else 'L2'}, trained on "
                f"{m['train_sample_rows']:,} rows, {m['niter']} iterations, {m['device']}) in "
                f"{self.seconds:.1f} s; sizes min {m['size_stats']['min']:,} / median "
                f"{m['size_stats']['p50']:,} / max {m['size_stats']['max']:,}, "
                f"{m['size_stats']['empty']} empty; mean inertia {m['mean_inertia']:.4f} "
                f"-> {self.store.path}")


def resolve_k(k: int | str, n: int) -> tuple[int, str]:
    """`auto` -> about sqrt(n/2) clamped to [8, 65536] (and to n); returns (k, rule)."""
    if str(k) == "auto":
        lo, hi = K_AUTO_RANGE
        chosen = int(min(n, max(lo, min(hi, round(math.sqrt(n / 2))))))
        return chosen, f"auto: sqrt(n/2) = sqrt({n:,}/2) clamped to [{lo}, {hi}] -> {chosen}"
    try:
        value = int(k)
    except (TypeError, ValueError):
        raise ConfigError(f"`k` must be a positive integer or 'auto', got {k!r}") from None
    if value < 1:
        raise ConfigError(f"`k` must be at least 1, got {value}")
    if value > n:
        raise ConfigError(f"`k` is {value:,} but the embeddings hold only {n:,} rows to "
                          f"cluster; lower --k (or use --k auto)")
    return value, "given"


def cluster_embeddings(
    embeddings: str | Path,
    out: str | Path,
    *,
    k: int | str = "auto",
    spherical: bool = True,
    niter: int = 20,
    seed: int = 0,
    sample_per_centroid: int = 256,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = False,
) -> ClusterResult:
    """Cluster an embedding store with FAISS k-means and write a cluster store to `out`.

    Args:
        embeddings: an embedding store directory (gristmill embed).
        out: the cluster store to write.
        k: number of centroids, or "auto" (about sqrt(n/2), clamped to [8, 65536]).
        spherical: cosine k-means on unit rows (default), else L2 k-means.
        niter: k-means iterations.
        seed: seeds the training sample and FAISS.
        sample_per_centroid: the training sample holds at most this many rows per centroid.
        device: auto (GPU when faiss has GPUs), cpu, cuda or cuda:N.

    Example:
        >>> result = cluster_embeddings("out/emb", "out/clusters", k=64)  # doctest: +SKIP
        >>> result.store.sizes.sum() == result.store.num_rows             # doctest: +SKIP
    """
    started = time.perf_counter()
    emb = EmbeddingStore.open(embeddings)
    if niter < 1 or sample_per_centroid < 1:
        raise ConfigError(f"`niter` and `sample_per_centroid` must be >= 1, got {niter} and "
                          f"{sample_per_centroid}")
    valid = _valid_rows(emb)
    k_used, k_rule = resolve_k(k, len(valid))
    gpus = _resolve_device(device)
    settings = {"k": k_used, "k_requested": str(k), "spherical": spherical, "niter": niter,
                "seed": seed, "sample_per_centroid": sample_per_centroid}
    key = fingerprint([emb.manifest["fingerprint"], *(f"{a}={b}" for a, b in settings.items())])
    current = _up_to_date(Path(out), key)
    if current is not None and not overwrite:
        return ClusterResult(current, "up to date")
    warnings = _preflight(len(valid), k_used, k_rule)
    preload_pyplot()  # imports matplotlib on a thread while FAISS trains (0.5 s saved)
    centroids, sample_rows, objective = _train(emb, valid, k_used, spherical, niter, seed,
                                               sample_per_centroid, gpus)
    with atomic_directory(Path(out), overwrite=overwrite or current is not None) as tmp:
        np.save(tmp / CENTROIDS, centroids)
        shards, sizes, inertia = _assign_all(emb, centroids, spherical, gpus, tmp, progress)
        warnings += _pairwise_warnings(sizes, emb.dim)
        plot_cluster_sizes(sizes, tmp / "cluster_sizes.png",
                           title=f"k={k_used} over {len(valid):,} rows")
        manifest = _manifest(emb, settings, key, k_rule, len(valid), sample_rows, objective,
                             sizes, inertia, gpus, warnings, shards)
        write_json(tmp / MANIFEST_NAME, manifest)
    seconds = time.perf_counter() - started
    log.info("clustered %d rows into %d clusters in %.1f s", len(valid), k_used, seconds)
    return ClusterResult(ClusterStore.open(out), "written", seconds)


def _valid_rows(emb: EmbeddingStore) -> np.ndarray:
    """Rows to cluster: all of them, or those embedded when the store covers a selection.

    In a store embedded with `--selection` the rows outside it are NaN by design: one scan
    finds the embedded rows, and the others get cluster -1. A full store is not scanned here
    (that pass cost a second per million rows): a NaN row in it is an error, raised from the
    training sample or the assignment pass, naming the rows, before anything is published.
    """
    if emb.manifest.get("selection") is None:
        return np.arange(emb.num_rows, dtype=np.int64)
    good = []
    for _, first, array in emb.iter_shards():
        for start in range(0, len(array), CHUNK_ROWS):
            finite = np.isfinite(np.asarray(array[start:start + CHUNK_ROWS])).all(axis=1)
            good.append(first + start + np.flatnonzero(finite))
    valid = np.concatenate(good) if good else np.empty(0, np.int64)
    if len(valid) == 0:
        raise InputError(f"{emb.path}: no embedded rows to cluster")
    return valid


def _refuse_nan(emb: EmbeddingStore, rows: np.ndarray) -> None:
    raise InputError(f"{emb.path}: NaN or inf embeddings at rows {rows[:5].tolist()} (first "
                     f"{min(len(rows), 5)}); re-embed with gristmill embed --overwrite")


def _resolve_device(device: str) -> int:
    """How many GPUs FAISS should use (0 = CPU)."""
    import faiss

    available = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if device == "auto":
        return available
    if device == "cpu":
        return 0
    if device.startswith("cuda"):
        if available == 0:
            raise ConfigError(f"--device {device}: this faiss build has no GPU support "
                              "(faiss-cpu, or no visible GPU); install faiss-gpu "
                              "(make gpu-install) or pass --device cpu")
        return 1
    raise ConfigError(f"`device` must be auto, cpu, cuda or cuda:N, got {device!r}")


def _preflight(n: int, k: int, k_rule: str) -> list[str]:
    notes: list[str] = []
    if k_rule != "given":
        log.info("k %s", k_rule)
    if n < MIN_POINTS_PER_CENTROID * k:
        note = (f"only {n / k:.1f} rows per centroid (k={k:,}, {n:,} rows); k-means wants at "
                f"least {MIN_POINTS_PER_CENTROID} per centroid: centroids will be noisy; "
                f"consider --k {max(1, n // MIN_POINTS_PER_CENTROID)}")
        log.info(note)  # the CLI prints manifest["warnings"]; Python callers read them there
        notes.append(note)
    return notes


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _train(emb: EmbeddingStore, valid: np.ndarray, k: int, spherical: bool, niter: int,
           seed: int, per_centroid: int, gpus: int) -> tuple[np.ndarray, int, float]:
    import faiss

    rng = np.random.default_rng(seed)
    size = min(len(valid), k * per_centroid)
    sample = np.sort(rng.choice(valid, size=size, replace=False)) if size < len(valid) \
        else valid
    x = emb.read_rows(sample)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        _refuse_nan(emb, sample[~finite])
    if spherical:
        x = _unit(x)
    kmeans = faiss.Kmeans(emb.dim, k, niter=niter, seed=seed, spherical=spherical,
                          gpu=gpus if gpus else False, verbose=False,
                          max_points_per_centroid=max(per_centroid, math.ceil(size / k) + 1),
                          min_points_per_centroid=1)
    kmeans.train(np.ascontiguousarray(x, dtype=np.float32))
    objective = float(kmeans.obj[-1]) if len(kmeans.obj) else float("nan")
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32), size, objective


def _index(centroids: np.ndarray, spherical: bool, gpus: int) -> Any:
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1]) if spherical \
        else faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    return faiss.index_cpu_to_all_gpus(index) if gpus else index


def _assign_all(emb: EmbeddingStore, centroids: np.ndarray, spherical: bool, gpus: int,
                tmp: Path, progress: bool) -> tuple[list[dict[str, Any]], np.ndarray, float]:
    index = _index(centroids, spherical, gpus)
    partial = emb.manifest.get("selection") is not None  # NaN rows are the unembedded ones
    sizes = np.zeros(len(centroids), dtype=np.int64)
    inertia, shards = 0.0, []
    bar = _progress(progress, emb.num_rows)
    for number, _, array in emb.iter_shards():
        labels = np.full(len(array), -1, dtype=np.int32)
        dist = np.full(len(array), np.nan, dtype=np.float32)
        for start in range(0, len(array), CHUNK_ROWS):
            x = np.asarray(array[start:start + CHUNK_ROWS], dtype=np.float32)
            finite = np.isfinite(x).all(axis=1)
            if not partial and not finite.all():
                _refuse_nan(emb, emb.shards[number].offset + start + np.flatnonzero(~finite))
            x = _unit(x[finite]) if spherical else x[finite]
            d, i = index.search(np.ascontiguousarray(x), 1)
            where = start + np.flatnonzero(finite)
            labels[where], dist[where] = i[:, 0], d[:, 0]
            # Squared L2 of unit rows to unit centroids is 2 - 2 cos.
            inertia += float(np.sum(2.0 - 2.0 * d[:, 0]) if spherical else np.sum(d[:, 0]))
            bar(len(x))
        sizes += np.bincount(labels[labels >= 0], minlength=len(centroids))
        shards.append(_write_shard(emb, number, labels, dist, tmp))
    bar(None)
    return shards, sizes, inertia


def _write_shard(emb: EmbeddingStore, number: int, labels: np.ndarray, dist: np.ndarray,
                 tmp: Path) -> dict[str, Any]:
    rel = Path(emb.shards[number].corpus_shard).with_suffix(".parquet")
    path = tmp / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"cluster": labels, "dist": dist}), path, compression="zstd")
    return {"path": rel.as_posix(), "embedding_shard": emb.shards[number].path.name,
            "rows": len(labels), "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _progress(enabled: bool, total: int) -> Any:
    if not enabled:
        return lambda advance: None
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task("assigning", total=total)
    bar.start()

    def advance(rows: int | None) -> None:
        if rows is None:
            bar.stop()
        else:
            bar.advance(task, rows)

    return advance


def _pairwise_warnings(sizes: np.ndarray, dim: int) -> list[str]:
    """Name clusters too big for dense pairwise work (SemDeDup and friends chunk them)."""
    largest = int(sizes.max()) if len(sizes) else 0
    dense = largest * largest * 4
    if dense <= DENSE_PAIRWISE_WARN_BYTES:
        return []
    note = (f"largest cluster {int(sizes.argmax())} holds {largest:,} rows: a dense Gram "
            f"matrix would need {dense / 2**30:.1f} GiB; pairwise selectors work on it in row "
            f"chunks (about {4096 * largest * 4 / 2**30:.2f} GiB each); raise --k to shrink it")
    log.info(note)
    return [note]


def _up_to_date(out: Path, key: str) -> ClusterStore | None:
    if not (out / MANIFEST_NAME).is_file():
        return None
    try:
        store = ClusterStore.open(out)
    except GristmillError:  # a damaged store is rebuilt (with --overwrite) or refused below
        return None
    return store if store.manifest.get("settings_key") == key else None


def _manifest(emb: EmbeddingStore, settings: dict[str, Any], key: str, k_rule: str,
              clustered: int, sample_rows: int, objective: float, sizes: np.ndarray,
              inertia: float, gpus: int, warnings: list[str],
              shards: list[dict[str, Any]]) -> dict[str, Any]:
    import faiss

    spherical = settings["spherical"]
    return {
        "kind": KIND, "format_version": FORMAT_VERSION,
        "gristmill_version": gristmill_version(), "created": now_iso(),
        **settings, "k_rule": k_rule,
        "rows": emb.num_rows, "clustered_rows": clustered, "dim": emb.dim,
        "dist": COSINE_SIMILARITY if spherical else SQUARED_L2,
        "dist_note": ("cosine similarity of the unit row to its centroid: larger is closer"
                      if spherical else "squared L2 distance to the centroid: smaller is "
                      "closer"),
        "index": "IndexFlatIP" if spherical else "IndexFlatL2",
        "train_sample_rows": sample_rows,
        "faiss_subsampled": sample_rows < clustered,
        "faiss_version": getattr(faiss, "__version__", "unknown"),
        "device": f"{gpus} GPU(s)" if gpus else "cpu",
        "sizes": sizes.tolist(),
        "size_stats": {"min": int(sizes.min()), "p50": int(np.median(sizes)),
                       "max": int(sizes.max()), "empty": int((sizes == 0).sum())},
        "inertia": inertia, "mean_inertia": inertia / max(clustered, 1),
        "faiss_objective": objective,
        "embeddings": {"path": str(emb.path), "fingerprint": emb.manifest["fingerprint"],
                       "model": emb.manifest.get("model"), "normalized": emb.normalized},
        "corpus_fingerprint": emb.manifest["corpus"]["fingerprint"],
        "warnings": warnings,
        "settings_key": key,
        "fingerprint": fingerprint([key, *(s["sha256"] for s in shards)]),
        "plot": "cluster_sizes.png",
        "shards": shards,
    }
