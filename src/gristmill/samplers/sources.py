"""Sources: one per domain over one or more token stores, with seeded per-epoch item orders.

An item is a (document, copy) pair. A document of selection weight w has floor(w) copies per
source-epoch plus one more with probability w - floor(w), drawn from (seed, domain,
source-epoch); the items of a source-epoch are then shuffled by the same generator. A source
that runs out (upsampled past its size) starts its next source-epoch with a fresh permutation,
so documents repeat only across source-epochs, never within one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gristmill.errors import ConfigError, InputError
from gristmill.storage.tokens import TokenDomain, TokenStore


def _stable_key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


@dataclass
class Source:
    """A domain's documents across stores (parts), with lengths, weights and labels.

    Attributes:
        name: the domain.
        index: position among the stream's sources (sorted by name).
        parts: (store path, TokenDomain) per store holding this domain.
        lengths: (n,) int64 tokens per document, parts back to back.
        weights: (n,) float64 selection weights (copies per epoch, expected).
    """

    name: str
    index: int
    parts: list[tuple[Path, TokenDomain]]
    lengths: np.ndarray
    weights: np.ndarray
    part_starts: np.ndarray  # (parts + 1,) first document index of each part
    _items: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def num_docs(self) -> int:
        return int(self.lengths.size)

    @property
    def expected_tokens(self) -> float:
        """Tokens per source-epoch, in expectation over the copy draws."""
        return float(np.dot(self.lengths, self.weights))

    def items(self, seed: int, src_epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(docs, copies) of one source-epoch in delivery order; cached for the last two."""
        key = int(src_epoch)
        if key not in self._items:
            rng = np.random.default_rng([int(seed), _stable_key(self.name), key])
            base = np.floor(self.weights).astype(np.int64)
            extra = rng.random(self.weights.size) < (self.weights - base)
            counts = base + extra
            docs = np.repeat(np.arange(self.num_docs, dtype=np.int64), counts)
            first = np.repeat(np.cumsum(counts) - counts, counts)
            copies = np.arange(docs.size, dtype=np.int64) - first
            perm = rng.permutation(docs.size)
            if len(self._items) >= 2:
                self._items.pop(min(self._items))
            self._items[key] = (docs[perm], copies[perm])
        return self._items[key]

    def locate(self, doc: int) -> tuple[Path, TokenDomain, int]:
        """(store path, domain part, document index within the part) of a document."""
        if len(self.parts) == 1:
            return self.parts[0][0], self.parts[0][1], doc
        part = int(np.searchsorted(self.part_starts, doc, side="right") - 1)
        store, domain = self.parts[part]
        return store, domain, doc - int(self.part_starts[part])

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_items"] = {}
        return state


def build_sources(stores: list[TokenStore]) -> list[Source]:
    """Group the stores' domains into sources sorted by name; stores must share a tokenizer."""
    if not stores:
        raise ConfigError("pass at least one token store")
    first = stores[0]
    for other in stores[1:]:
        a, b = first.tokenizer, other.tokenizer
        if (a.get("fingerprint"), a.get("vocab_size")) != (b.get("fingerprint"),
                                                           b.get("vocab_size")):
            raise ConfigError(f"token stores use different tokenizers: {first.path} has "
                              f"{a.get('name')!r} (fingerprint {a.get('fingerprint')}, vocab "
                              f"{a.get('vocab_size')}), {other.path} has {b.get('name')!r} "
                              f"(fingerprint {b.get('fingerprint')}, vocab {b.get('vocab_size')});"
                              f" re-tokenize them with one tokenizer")
    seen_paths = [str(s.path.resolve()) for s in stores]
    if len(set(seen_paths)) != len(seen_paths):
        raise ConfigError("the same token store is listed twice; each document would be "
                          "delivered twice per epoch (use weights to upsample)")
    grouped: dict[str, list[tuple[Path, TokenDomain]]] = {}
    for store in stores:
        for name, domain in store.domains.items():
            grouped.setdefault(name, []).append((store.path, domain))
    sources = []
    for index, name in enumerate(sorted(grouped)):
        parts = grouped[name]
        lengths = np.concatenate([p[1].lengths for p in parts]).astype(np.int64)
        weights = np.concatenate([p[1].column("weight") for p in parts]).astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
        if bad.size:
            raise InputError(f"domain {name!r} has a document with weight {weights[bad[0]]} "
                             f"(#{int(bad[0])}); weights must be finite and >= 0")
        starts = np.concatenate([[0], np.cumsum([p[1].num_docs for p in parts])]).astype(np.int64)
        sources.append(Source(name, index, parts, lengths, weights, starts))
    return sources
