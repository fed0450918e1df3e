"""Stream fixtures: real token stores on disk and the `check_resumable` conformance helper.

Token stores here are written with `TokenStoreWriter` from seeded random token ids (lognormal
lengths), so the tests control document counts, lengths and selection weights exactly; the
tokenize stage's own tests cover text -> tokens. The helpers live in tokstores.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from tokstores import check_resumable as _check_resumable
from tokstores import write_token_store


@pytest.fixture(scope="session")
def token_store(tmp_path_factory) -> Path:
    """Three domains of different sizes and lengths (~90k tokens)."""
    return write_token_store(tmp_path_factory.mktemp("tok") / "store",
                             {"web": (200, 150), "code": (60, 600), "math": (40, 60)})


@pytest.fixture
def make_token_store(tmp_path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def make(domains: Mapping[str, tuple[int, float]], **kwargs: Any) -> Path:
        return write_token_store(tmp_path / f"store{next(counter)}", domains, **kwargs)

    return make


def batch_key(batch: dict[str, Any]) -> tuple[bytes, ...]:
    """Everything a batch holds, comparable with ==."""
    tensors = tuple(batch[k].numpy().tobytes() for k in
                    ("input_ids", "labels", "position_ids", "cu_seqlens", "segment_ids"))
    return (*tensors, repr(batch["segments"]).encode())


@pytest.fixture(scope="session")
def check_resumable() -> Callable[..., int]:
    """`check_resumable(make_stream, cuts)` asserts identical continuation after each cut."""
    return _check_resumable
