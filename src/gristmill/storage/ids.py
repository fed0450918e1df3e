"""Stable document ids: a 128-bit hash of (source key, record position), as 32 hex characters.

The source key is the path relative to the parent of the argument the user passed (so the
same files give the same ids on any machine), and the record position is the 0-based line of a
JSONL file or row of a table. Hashing is vectorised (splitmix64 in numpy) because ingest makes
millions of ids per second.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

_HEX = np.frombuffer(b"".join(f"{i:02x}".encode() for i in range(256)), np.uint8).reshape(256, 2)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (Steele et al. 2014): a bijective 64-bit mix; wraps on overflow."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def make_ids(source_key: str, positions: np.ndarray) -> pa.StringArray:
    """Ids for records at `positions` ((n,) int64) of the source named `source_key`.

    Returns an (n,) Arrow string array of 32 lowercase hex characters each.
    """
    seed = hashlib.blake2b(source_key.encode(), digest_size=16).digest()
    seeds = np.frombuffer(seed, dtype="<u8")
    pos = np.asarray(positions, dtype=np.uint64)
    with np.errstate(over="ignore"):
        halves = [_splitmix64(_splitmix64(pos ^ s) + s) for s in seeds]
    words = np.stack(halves, axis=1).astype(">u8")  # big-endian: hex reads high word first
    digits = _HEX[words.view(np.uint8)].reshape(len(pos), 32)
    offsets = np.arange(0, 32 * len(pos) + 1, 32, dtype=np.int32)
    return pa.StringArray.from_buffers(
        len(pos), pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(digits))
    )
