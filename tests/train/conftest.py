"""Train fixtures: hand-written token stores (see train_corpus) and a tiny model config."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
import torch
from train_corpus import VOCAB, write_docs

from gristmill.train import ProxyConfig


@pytest.fixture
def make_store(tmp_path) -> Callable[[Mapping[str, Sequence[Sequence[int]]]], Path]:
    counter = iter(range(1000))

    def make(domains: Mapping[str, Sequence[Sequence[int]]]) -> Path:
        return write_docs(tmp_path / f"store{next(counter)}", domains)

    return make


@pytest.fixture
def tiny_config() -> ProxyConfig:
    return ProxyConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                       max_seq_len=128)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and a busy 2-core machine makes OpenMP
    barriers between two threads cost milliseconds per op (observed 40x slower steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
