"""Token-store helpers for the stream tests: real stores written with `TokenStoreWriter`.

Imported by the tests (`from tokstores import ...`) and by conftest.py; a uniquely named module,
so it never collides with another folder's conftest.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gristmill.storage.atomic import atomic_directory
from gristmill.storage.tokens import TokenStoreWriter

VOCAB = 1000
TOKENIZER = {"name": "synthetic", "vocab_size": VOCAB, "pad_id": 1, "eos_id": 0,
             "fingerprint": "synthetic-1000"}


def write_token_store(out: Path, domains: Mapping[str, tuple[int, float]], *, seed: int = 0,
                      weights: Mapping[str, Iterable[float]] | None = None,
                      tokenizer: Mapping[str, Any] = TOKENIZER) -> Path:
    """domains: name -> (documents, mean length); ids are `<domain>-<i>`, tokens in [2, vocab)."""
    rng = np.random.default_rng(seed)
    with atomic_directory(Path(out), overwrite=True) as tmp:
        writer = TokenStoreWriter(tmp, tokenizer=dict(tokenizer))
        for name, (n, mean) in domains.items():
            lengths = np.maximum(1, rng.lognormal(np.log(mean), 0.8, n)).astype(int)
            docs = [rng.integers(2, int(tokenizer["vocab_size"]), k) for k in lengths]
            w = None if weights is None or name not in weights else list(weights[name])
            writer.add(name, docs, ids=[f"{name}-{i}" for i in range(n)], rows=list(range(n)),
                       weights=w, clusters=[i % 5 for i in range(n)],
                       selectors=["synthetic"] * n)
        writer.finish(inputs={"synthetic": seed})
    return Path(out)


def batch_key(batch: dict[str, Any]) -> tuple[bytes, ...]:
    """Everything a batch holds, comparable with ==."""
    tensors = tuple(batch[k].numpy().tobytes() for k in
                    ("input_ids", "labels", "position_ids", "cu_seqlens", "segment_ids"))
    return (*tensors, repr(batch["segments"]).encode())


def check_resumable(make_stream: Callable[[], Any], cuts: Iterable[int]) -> int:
    """Checkpoint an uninterrupted run after each of `cuts` batches; a fresh stream loaded with
    that state (round-tripped through torch.save / torch.load(weights_only=True)) must yield
    exactly the remaining batches. Returns the number of batches of the full run."""
    full = [batch_key(b) for b in make_stream()]
    for cut in cuts:
        cut = min(cut, len(full))
        stream = make_stream()
        it = iter(stream)
        for _ in range(cut):
            next(it)
        buf = io.BytesIO()
        torch.save(stream.state_dict(), buf)
        buf.seek(0)
        state = torch.load(buf, weights_only=True)
        fresh = make_stream()
        fresh.load_state_dict(state)
        rest = [batch_key(b) for b in fresh]
        assert len(rest) == len(full) - cut, f"resume at {cut}: {len(rest)} batches, " \
            f"expected {len(full) - cut}"
        assert rest == full[cut:], f"resume at {cut} diverges"
    return len(full)


