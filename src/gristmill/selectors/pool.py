"""The pool a selector chooses from: corpus rows with their vectors, clusters and domains.

A pool is either every row of a corpus or the rows of an earlier selection (`--pool SEL`), so
selections compose. Selectors index it by *pool position* (0 .. size - 1); `rows` maps a
position to its global corpus row. Vectors stay in the memory-mapped embedding store and are
gathered per cluster or per chunk, so a pool never holds the whole store in RAM as float32.
`Pool.from_arrays` builds one from in-memory arrays (tests, notebooks).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow.compute as pc

from gristmill.errors import ConfigError, InputError
from gristmill.storage.clusters import COSINE_SIMILARITY, ClusterStore
from gristmill.storage.corpus import CorpusStore
from gristmill.storage.embeddings import EmbeddingStore
from gristmill.storage.selection import SelectedRows, read_selection

CHUNK_ROWS = 65_536
T = TypeVar("T")


@dataclass
class Pool:
    """Rows to select from.

    Attributes:
        rows: (n,) int64 sorted unique global corpus rows.
        labels: (n,) int32 cluster of each row, or None without clusters.
        dist: (n,) float32 each row's `dist` to its centroid (see `dist_metric`), or None.
        centroids: (k, d) float32, or None.
        spherical: whether the clusters came from spherical (cosine) k-means.
        domains: (n,) int32 index into `domain_names`.
        domain_names: the corpus domains.
    """

    rows: np.ndarray
    dim: int
    labels: np.ndarray | None = None
    dist: np.ndarray | None = None
    centroids: np.ndarray | None = None
    spherical: bool = True
    dist_metric: str = COSINE_SIMILARITY
    domains: np.ndarray | None = None
    domain_names: list[str] = field(default_factory=lambda: ["all"])
    corpus: CorpusStore | None = None
    embeddings: EmbeddingStore | None = None
    clusters: ClusterStore | None = None
    source: SelectedRows | None = None
    progress: bool = False  # show a rich progress bar in `track`
    _vectors: np.ndarray | None = None
    _texts: list[str] | None = None

    def __post_init__(self) -> None:
        if self.domains is None:
            self.domains = np.zeros(len(self.rows), dtype=np.int32)

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def has_texts(self) -> bool:
        """Whether `iter_texts` can read document texts (a corpus, or texts in memory)."""
        return self.corpus is not None or self._texts is not None

    @property
    def num_clusters(self) -> int:
        return 0 if self.centroids is None else len(self.centroids)

    @classmethod
    def from_arrays(cls, vectors: np.ndarray, *, labels: np.ndarray | None = None,
                    centroids: np.ndarray | None = None, spherical: bool = True,
                    domains: np.ndarray | None = None, domain_names: list[str] | None = None,
                    texts: list[str] | None = None) -> Pool:
        """A pool over in-memory `vectors` ((n, d) float), e.g. for tests.

        With `labels` and `centroids`, `dist` is computed as the selectors expect: cosine
        similarity of the unit row to its centroid when `spherical`, else squared L2.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n = len(vectors)
        dist = None
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int32)
            if centroids is None:
                centroids = _mean_centroids(vectors, labels, spherical)
            centroids = np.asarray(centroids, dtype=np.float32)
            dist = _row_dist(vectors, centroids[labels], spherical)
        return cls(rows=np.arange(n, dtype=np.int64), dim=vectors.shape[1], labels=labels,
                   dist=dist, centroids=centroids, spherical=spherical,
                   dist_metric=COSINE_SIMILARITY if spherical else "squared_l2",
                   domains=None if domains is None else np.asarray(domains, np.int32),
                   domain_names=domain_names or ["all"], _vectors=vectors, _texts=texts)

    def vectors(self, positions: np.ndarray, *, normalize: bool = True) -> np.ndarray:
        """(m, d) float32 vectors of pool `positions`, unit rows when `normalize`."""
        positions = np.asarray(positions, dtype=np.int64)
        if self._vectors is not None:
            out = self._vectors[positions].astype(np.float32, copy=True)
        else:
            assert self.embeddings is not None
            out = self.embeddings.read_rows(self.rows[positions])
        if normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.where(norms > 0, norms, 1.0)
        return out

    def track(self, groups: Sequence[T], description: str) -> Iterator[T]:
        """Iterate `groups` (clusters, chunks), with a progress bar when `self.progress`."""
        if not self.progress:
            yield from groups
            return
        from rich.progress import track

        yield from track(groups, description=description, transient=True)

    def iter_chunks(self, chunk_rows: int = CHUNK_ROWS, *, normalize: bool = True
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield `(pool positions, (m, d) float32 vectors)` in order, `chunk_rows` at a time."""
        for start in range(0, self.size, chunk_rows):
            positions = np.arange(start, min(self.size, start + chunk_rows), dtype=np.int64)
            yield positions, self.vectors(positions, normalize=normalize)

    def members(self) -> list[np.ndarray]:
        """Pool positions of each cluster (index = cluster id), each sorted."""
        if self.labels is None:
            raise ConfigError("this selector needs clusters: pass --clusters CL (from "
                              "gristmill cluster)")
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(self.num_clusters + 1))
        return [order[bounds[c]:bounds[c + 1]] for c in range(self.num_clusters)]

    def cosine_to_centroid(self) -> np.ndarray:
        """(n,) float32 cosine similarity of each row to its centroid (spherical clusters)."""
        if self.dist is None:
            raise ConfigError("this selector needs clusters: pass --clusters CL")
        if self.dist_metric != COSINE_SIMILARITY:
            raise ConfigError("this selector needs spherical clusters (cosine); re-run "
                              "gristmill cluster with --spherical")
        return self.dist

    def column(self, name: str) -> np.ndarray:
        """A numeric corpus column for the pool rows (e.g. a quality score), float64."""
        if self.corpus is None:
            raise ConfigError(f"column {name!r} needs a corpus store")
        if name not in self.corpus.schema.names:
            raise ConfigError(f"column {name!r} is not in {self.corpus.path} (columns: "
                              f"{', '.join(self.corpus.schema.names)})")
        values = self.corpus.read_column(name).astype(np.float64)[self.rows]
        if not np.all(np.isfinite(values)):
            bad = np.flatnonzero(~np.isfinite(values))[:5]
            raise InputError(f"column {name!r} has missing or non-finite values at rows "
                             f"{self.rows[bad].tolist()}")
        return values

    def iter_texts(self, batch_rows: int = 10_000) -> Iterator[tuple[np.ndarray, list[str]]]:
        """Yield `(pool positions, texts)` in pool order, streaming the corpus by row group."""
        if self._texts is not None:
            for start in range(0, self.size, batch_rows):
                stop = min(self.size, start + batch_rows)
                yield np.arange(start, stop), self._texts[start:stop]
            return
        assert self.corpus is not None
        for _, first, table in self.corpus.iter_batches(["text"]):
            lo, hi = np.searchsorted(self.rows, [first, first + table.num_rows])
            if hi > lo:
                local = self.rows[lo:hi] - first
                texts = table.column("text").take(local).to_pylist()
                yield np.arange(lo, hi), texts


def load_pool(corpus: str | Path, embeddings: str | Path, *, clusters: str | Path | None = None,
              pool: str | Path | None = None, progress: bool = False) -> Pool:
    """Open and cross-check the stores a selector reads, and build its pool.

    Refuses embeddings computed from another corpus, clusters computed from other embeddings,
    a pool selection of another corpus, and NaN/inf vectors in the pool (naming the rows).
    """
    store = CorpusStore.open(corpus)
    emb = EmbeddingStore.open(embeddings)
    emb.check_corpus(store)
    source = read_selection(pool, corpus=store) if pool is not None else None
    rows = source.rows if source is not None else np.arange(store.num_rows, dtype=np.int64)
    if len(rows) == 0:
        raise InputError(f"the pool is empty ({pool or corpus}); nothing to select from")
    result = Pool(rows=rows, dim=emb.dim, corpus=store, embeddings=emb, source=source,
                  progress=progress, **_domains(store, rows))
    if clusters is not None:
        _attach_clusters(result, ClusterStore.open(clusters), emb)
    _check_finite(result)
    return result


def _domains(store: CorpusStore, rows: np.ndarray) -> dict[str, Any]:
    column = store.dataset().to_table(columns=["domain"]).column("domain")
    encoded = pc.dictionary_encode(column.cast("string")).combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)
    return {"domains": codes[rows], "domain_names": encoded.dictionary.to_pylist()}


def _attach_clusters(pool: Pool, clusters: ClusterStore, emb: EmbeddingStore) -> None:
    clusters.check_embeddings(emb)
    if clusters.num_rows != emb.num_rows:
        raise InputError(f"{clusters.path} has {clusters.num_rows} rows but {emb.path} has "
                         f"{emb.num_rows}")
    labels, dist = clusters.read_all()
    pool.labels, pool.dist = labels[pool.rows], dist[pool.rows]
    pool.centroids, pool.clusters = clusters.centroids(), clusters
    pool.spherical, pool.dist_metric = clusters.spherical, clusters.dist_metric
    if np.any(pool.labels < 0):
        bad = pool.rows[np.flatnonzero(pool.labels < 0)[:5]]
        raise InputError(f"{clusters.path}: pool rows {bad.tolist()} have no cluster")


def _check_finite(pool: Pool) -> None:
    bad: list[int] = []
    for positions, vectors in pool.iter_chunks(normalize=False):
        broken = ~np.isfinite(vectors).all(axis=1)
        bad += pool.rows[positions[broken]].tolist()[: 5 - len(bad)]
        if len(bad) >= 5:
            break
    if bad:
        where = pool.embeddings.path if pool.embeddings is not None else "the vectors"
        raise InputError(f"{where}: NaN or inf embeddings at corpus rows {bad} (first "
                         f"{len(bad)}); re-embed them, or pass --pool with a selection that "
                         "leaves them out")


def _mean_centroids(vectors: np.ndarray, labels: np.ndarray, spherical: bool) -> np.ndarray:
    from scipy import sparse

    k = int(labels.max()) + 1 if len(labels) else 0
    # A sparse one-hot product sums each cluster's rows in one pass (np.add.at is ~100x slower).
    onehot = sparse.csr_matrix((np.ones(len(labels), np.float32),
                                (labels, np.arange(len(labels)))), shape=(k, len(labels)))
    sums = np.asarray(onehot @ vectors, dtype=np.float64)
    counts = np.maximum(np.bincount(labels, minlength=k), 1)[:, None]
    centroids = sums / counts
    if spherical:
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return centroids.astype(np.float32)


def _row_dist(vectors: np.ndarray, centres: np.ndarray, spherical: bool) -> np.ndarray:
    if spherical:
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return np.einsum("ij,ij->i", unit, centres).astype(np.float32)
    return ((vectors - centres) ** 2).sum(axis=1).astype(np.float32)
