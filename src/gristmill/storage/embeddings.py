"""Open an embedding store and read it back, row-aligned with its corpus.

Layout (DESIGN.md, Data contracts: Embeddings): for each corpus shard `STORE/<rel>/<stem>.parquet`
one float16 array `EMB/<rel>/<stem>.npy` of shape (shard rows, dim), memory-mapped on read,
and `EMB/manifest.json` with the model, its revision, pooling, dimension, max tokens, whether
rows are L2-normalized, the truncation count and the corpus fingerprint. Rows outside a
`--selection` hold NaN. Rows never move: row i of the corpus is row i of the embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.errors import CorruptStoreError, InputError
from gristmill.storage.schema import file_sha256, read_manifest

KIND = "embeddings"
#: The settings a re-run compares; a store computed under other values is not reused.
SETTING_KEYS = ("model", "model_revision", "pooling", "normalized", "max_tokens",
                "compute_dtype", "selection_fingerprint")


@dataclass(frozen=True)
class EmbeddingShard:
    """One `.npy` array: `rows` rows starting at global row `offset`."""

    path: Path
    corpus_shard: str
    rows: int
    offset: int
    bytes: int
    sha256: str


def npy_name(corpus_shard: str) -> str:
    """`sub/part-00003.parquet` -> `sub/part-00003.npy` (relative, POSIX separators)."""
    return str(Path(corpus_shard).with_suffix(".npy").as_posix())


class EmbeddingStore:
    """An embedding store on disk.

    Example:
        >>> emb = EmbeddingStore.open("out/emb")                  # doctest: +SKIP
        >>> emb.check_corpus(open_store("out/corpus"))            # doctest: +SKIP
        >>> for index, first_row, vectors in emb.iter_shards():   # doctest: +SKIP
        ...     ...  # (rows, dim) float16 memory map
    """

    def __init__(self, path: Path, manifest: dict[str, Any], shards: list[EmbeddingShard]):
        self.path = path
        self.manifest = manifest
        self.shards = shards

    @classmethod
    def open(cls, path: str | Path) -> EmbeddingStore:
        """Open and check sizes and array headers; raises CorruptStoreError naming the file."""
        root = Path(path)
        manifest = read_manifest(root, KIND)
        shards, offset = [], 0
        for record in manifest["shards"]:
            shard = _check_shard(root, record, offset, int(manifest["dim"]))
            shards.append(shard)
            offset += shard.rows
        listed = {s.path.resolve() for s in shards}
        strays = sorted(p for p in root.rglob("*.npy") if p.resolve() not in listed)
        if strays:
            raise CorruptStoreError(f"{strays[0]}: array not listed in the manifest; remove it "
                                    "or re-run gristmill embed")
        return cls(root, manifest, shards)

    @property
    def num_rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def normalized(self) -> bool:
        return bool(self.manifest["normalized"])

    @property
    def settings(self) -> dict[str, Any]:
        return {key: self.manifest.get(key) for key in SETTING_KEYS}

    def check_corpus(self, corpus: Any) -> None:
        """Refuse to pair these embeddings with a corpus they were not computed from."""
        expected = self.manifest["corpus"]["fingerprint"]
        if corpus.fingerprint != expected:
            raise InputError(
                f"{self.path} was computed from a corpus with fingerprint {expected}, but "
                f"{corpus.path} has fingerprint {corpus.fingerprint}; re-run gristmill embed "
                f"{corpus.path} --out {self.path} --overwrite"
            )

    def shard_array(self, index: int) -> np.ndarray:
        """Shard `index` as a read-only (rows, dim) float16 memory map."""
        return np.load(self.shards[index].path, mmap_mode="r")

    def iter_shards(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield `(shard index, first global row, (rows, dim) float16 memmap)`."""
        for index, shard in enumerate(self.shards):
            yield index, shard.offset, self.shard_array(index)

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Gather global `rows` ((k,) int) into a (k, dim) float32 array, in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise InputError(f"row {int(rows.max())} is out of range for {self.path} "
                             f"({self.num_rows} rows)")
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        offsets = np.array([s.offset for s in self.shards] + [self.num_rows])
        which = np.searchsorted(offsets, rows, side="right") - 1
        for index in np.unique(which):
            picked = which == index
            out[picked] = self.shard_array(int(index))[rows[picked] - offsets[index]]
        return out

    def to_numpy(self) -> np.ndarray:
        """Every row as one (rows, dim) float32 array (small stores only)."""
        return np.concatenate([np.asarray(a, dtype=np.float32) for _, _, a in self.iter_shards()])

    def verify(self) -> None:
        """Re-hash every array against the manifest."""
        for shard in self.shards:
            if file_sha256(shard.path) != shard.sha256:
                raise CorruptStoreError(f"{shard.path}: sha256 does not match the manifest; "
                                        "the array changed after embedding: re-run gristmill "
                                        "embed --overwrite")


def _check_shard(root: Path, record: dict[str, Any], offset: int, dim: int) -> EmbeddingShard:
    path = root / record["path"]
    if not path.is_file():
        raise CorruptStoreError(f"{path}: array listed in the manifest is missing; re-run "
                                "gristmill embed")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise CorruptStoreError(f"{path}: {size} bytes on disk but {record['bytes']} in the "
                                "manifest; the array is truncated or was replaced")
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise CorruptStoreError(f"{path}: not a readable .npy array ({exc})") from exc
    if array.shape != (record["rows"], dim) or array.dtype != np.float16:
        raise CorruptStoreError(f"{path}: holds {array.dtype} {array.shape}, manifest says "
                                f"float16 ({record['rows']}, {dim})")
    return EmbeddingShard(path, record["corpus_shard"], record["rows"], offset, size,
                          record["sha256"])


def open_embeddings(path: str | Path) -> EmbeddingStore:
    """Open an embedding store (alias of `EmbeddingStore.open`)."""
    return EmbeddingStore.open(path)
