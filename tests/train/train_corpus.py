"""Hand-written token stores for the train tests (imported by conftest and the tests).

The documents are chosen so results can be checked by hand: repeating patterns a tiny model
learns in a few hundred steps, constant and alternating documents with known losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from gristmill.storage.atomic import atomic_directory
from gristmill.storage.tokens import TokenStoreWriter

VOCAB = 64
TOKENIZER = {"name": "synthetic", "vocab_size": VOCAB, "pad_id": 1, "eos_id": 0,
             "fingerprint": "synthetic-64"}


def write_docs(out: Path, domains: Mapping[str, Sequence[Sequence[int]]]) -> Path:
    """A token store of the given documents; ids `<domain>-<i>`, cluster i % 3."""
    with atomic_directory(Path(out), overwrite=True) as tmp:
        writer = TokenStoreWriter(tmp, tokenizer=dict(TOKENIZER))
        for name, docs in domains.items():
            n = len(docs)
            writer.add(name, [list(d) for d in docs], ids=[f"{name}-{i}" for i in range(n)],
                       rows=list(range(n)), clusters=[i % 3 for i in range(n)],
                       selectors=["handmade"] * n)
        writer.finish(inputs={"handmade": 1})
    return Path(out)


def pattern_docs(count: int, *, period: int = 6, first: int = 2) -> list[list[int]]:
    """Documents repeating one of four short patterns, lengths 12..30."""
    docs = []
    for i in range(count):
        base = first + (i % 4) * period
        length = 12 + (i * 7) % 19
        docs.append([base + (t % period) for t in range(length)])
    return docs
