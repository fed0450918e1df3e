"""Open a cluster store (written by `gristmill cluster`) and read it back, row-aligned.

Layout: `CL/centroids.npy` (k, dim) float32; for each corpus shard `STORE/<rel>/<stem>.parquet`
one `CL/<rel>/<stem>.parquet` with columns `cluster` (int32) and `dist` (float32), row-aligned
with it; `CL/manifest.json` with k, whether k-means was spherical, what `dist` holds
(`cosine_similarity`: larger is closer, or `squared_l2`: smaller is closer), the training sample
size, sizes, inertia and the embedding store it was computed from; `CL/cluster_sizes.png`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gristmill.errors import CorruptStoreError, InputError
from gristmill.storage.schema import read_manifest

KIND = "clusters"
CENTROIDS = "centroids.npy"
COSINE_SIMILARITY, SQUARED_L2 = "cosine_similarity", "squared_l2"


@dataclass(frozen=True)
class ClusterStore:
    """A cluster store on disk.

    Example:
        >>> clusters = ClusterStore.open("out/clusters")   # doctest: +SKIP
        >>> labels, dist = clusters.read_all()              # doctest: +SKIP
    """

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> ClusterStore:
        """Open and check the manifest, the centroids and every listed shard's size."""
        root = Path(path)
        manifest = read_manifest(root, KIND)
        centroids = root / CENTROIDS
        if not centroids.is_file():
            raise CorruptStoreError(f"{centroids}: centroids are missing; re-run gristmill "
                                    "cluster")
        for record in manifest["shards"]:
            file = root / record["path"]
            if not file.is_file() or file.stat().st_size != record["bytes"]:
                raise CorruptStoreError(f"{file}: missing or not the size the manifest "
                                        "records; re-run gristmill cluster")
        return cls(root, manifest)

    @property
    def k(self) -> int:
        return int(self.manifest["k"])

    @property
    def num_rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def spherical(self) -> bool:
        return bool(self.manifest["spherical"])

    @property
    def dist_metric(self) -> str:
        return str(self.manifest["dist"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def sizes(self) -> np.ndarray:
        return np.asarray(self.manifest["sizes"], dtype=np.int64)

    def centroids(self) -> np.ndarray:
        """(k, dim) float32 centroids (unit rows when spherical)."""
        try:
            array = np.load(self.path / CENTROIDS)
        except (ValueError, OSError) as exc:
            raise CorruptStoreError(f"{self.path / CENTROIDS}: unreadable ({exc})") from exc
        if array.shape[0] != self.k:
            raise CorruptStoreError(f"{self.path / CENTROIDS}: {array.shape[0]} centroids, "
                                    f"manifest says k={self.k}")
        return array.astype(np.float32, copy=False)

    def read_all(self) -> tuple[np.ndarray, np.ndarray]:
        """`(cluster (rows,) int32, dist (rows,) float32)` for every corpus row, in row order."""
        labels, dists = [], []
        for record in self.manifest["shards"]:
            file = self.path / record["path"]
            try:
                table = pq.read_table(file, columns=["cluster", "dist"])
            except (pa.ArrowInvalid, OSError, KeyError) as exc:
                raise CorruptStoreError(f"{file}: unreadable cluster shard ({exc})") from exc
            if table.num_rows != record["rows"]:
                raise CorruptStoreError(f"{file}: {table.num_rows} rows, manifest says "
                                        f"{record['rows']}")
            labels.append(table.column("cluster").to_numpy().astype(np.int32))
            dists.append(table.column("dist").to_numpy().astype(np.float32))
        if not labels:
            return np.empty(0, np.int32), np.empty(0, np.float32)
        return np.concatenate(labels), np.concatenate(dists)

    def check_embeddings(self, embeddings: Any) -> None:
        """Refuse clusters computed from another embedding store."""
        expected = self.manifest["embeddings"]["fingerprint"]
        if expected != embeddings.manifest.get("fingerprint"):
            raise InputError(
                f"{self.path} was computed from embeddings with fingerprint {expected}, but "
                f"{embeddings.path} has fingerprint {embeddings.manifest.get('fingerprint')}; "
                f"re-run gristmill cluster {embeddings.path} --out {self.path} --overwrite"
            )


def open_clusters(path: str | Path) -> ClusterStore:
    """Open a cluster store (alias of `ClusterStore.open`)."""
    return ClusterStore.open(path)
