"""The token store: per-domain flat uint32 tokens + int64 document offsets, memory-mapped.

Layout of a token store directory (DESIGN.md, Data contracts: Token store; Megatron-style):

```
TOK/manifest.json            kind "tokens", tokenizer (name, vocab_size, eos/pad ids,
                             fingerprint), eos handling, domains, inputs, lineage
TOK/domains/000/tokens.bin   raw little-endian uint32 token ids, all documents back to back
TOK/domains/000/offsets.npy  (n + 1,) int64: document i is tokens[offsets[i]:offsets[i + 1]]
TOK/domains/000/docs.parquet one row per document: id, row, weight, cluster, selector
```

`docs.parquet` keeps what the stream needs to plan copies and label segments: `weight` is the
sampling multiplicity from a selection (1.0 without one; a weight of 2 means two copies per
epoch, planned by the stream, never written twice), `cluster` (-1 when unknown) and `selector`
("" when none). The manifest's `eos` says whether an end-of-document token was appended to
every document (it then counts in the document's length).

Writers use `TokenStoreWriter` inside `atomic_directory`, so no partial store is ever visible.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gristmill.errors import ConfigError, CorruptStoreError, InputError
from gristmill.storage.schema import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    fingerprint,
    gristmill_version,
    now_iso,
    read_manifest,
    write_json,
)

KIND = "tokens"
TOKEN_DTYPE = np.dtype("<u4")
TOKENS_FILE, OFFSETS_FILE, DOCS_FILE = "tokens.bin", "offsets.npy", "docs.parquet"
DOC_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("row", pa.int64()),
    ("weight", pa.float64()),
    ("cluster", pa.int32()),
    ("selector", pa.string()),
])


@dataclass
class TokenDomain:
    """One domain of a token store: memory-mapped tokens and offsets, lazily read metadata."""

    store: Path
    name: str
    path: Path
    num_docs: int
    num_tokens: int
    sha256: str
    _tokens: np.ndarray | None = field(default=None, repr=False)
    _offsets: np.ndarray | None = field(default=None, repr=False)
    _docs: pa.Table | None = field(default=None, repr=False)

    @property
    def tokens(self) -> np.ndarray:
        """(num_tokens,) uint32, memory-mapped (opened on first use, so pickling is cheap)."""
        if self._tokens is None:
            if self.num_tokens == 0:
                self._tokens = np.zeros(0, dtype=TOKEN_DTYPE)
            else:
                # A plain ndarray view of the map: slicing it skips np.memmap's per-slice
                # Python overhead (the stream slices once per packed segment).
                self._tokens = np.asarray(np.memmap(self.path / TOKENS_FILE, dtype=TOKEN_DTYPE,
                                                    mode="r", shape=(self.num_tokens,)))
        return self._tokens

    @property
    def offsets(self) -> np.ndarray:
        """(num_docs + 1,) int64 document offsets into `tokens`."""
        if self._offsets is None:
            # Plain ndarray view of the map (np.memmap's per-index overhead is slow here).
            self._offsets = np.asarray(np.load(self.path / OFFSETS_FILE, mmap_mode="r"))
        return self._offsets

    @property
    def lengths(self) -> np.ndarray:
        """(num_docs,) int64 tokens per document."""
        return np.diff(np.asarray(self.offsets, dtype=np.int64))

    @property
    def docs(self) -> pa.Table:
        """id, row, weight, cluster, selector per document."""
        if self._docs is None:
            try:
                self._docs = pq.read_table(self.path / DOCS_FILE)
            except (OSError, pa.ArrowInvalid) as exc:
                raise CorruptStoreError(f"{self.path / DOCS_FILE}: cannot read ({exc}); "
                                        f"re-run gristmill tokenize") from exc
        return self._docs

    def column(self, name: str) -> np.ndarray:
        """One docs.parquet column as numpy (ids and selectors as object arrays)."""
        return self.docs.column(name).to_numpy(zero_copy_only=False)

    def doc_tokens(self, doc: int) -> np.ndarray:
        """Token ids of one document."""
        lo, hi = int(self.offsets[doc]), int(self.offsets[doc + 1])
        return np.asarray(self.tokens[lo:hi])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_tokens=None, _offsets=None, _docs=None)  # reopen in the worker
        return state


class TokenStore:
    """A token store opened for reading; `TokenStore.open(path)` checks it against its manifest.

    Attributes:
        path: the store directory.
        manifest: the parsed manifest.
        domains: domain name -> TokenDomain, in manifest order.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], domains: dict[str, TokenDomain]):
        self.path = path
        self.manifest = manifest
        self.domains = domains

    @classmethod
    def open(cls, path: str | Path) -> TokenStore:
        root = Path(path)
        manifest = read_manifest(root, KIND)
        domains: dict[str, TokenDomain] = {}
        for record in manifest.get("domains", []):
            domain = _check_domain(root, record)
            domains[domain.name] = domain
        return cls(root, manifest, domains)

    @property
    def tokenizer(self) -> dict[str, Any]:
        return dict(self.manifest["tokenizer"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def eos_id(self) -> int | None:
        value = self.manifest["tokenizer"].get("eos_id")
        return None if value is None else int(value)

    @property
    def pad_id(self) -> int:
        return int(self.manifest["tokenizer"]["pad_id"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def num_docs(self) -> int:
        return sum(d.num_docs for d in self.domains.values())

    @property
    def num_tokens(self) -> int:
        return sum(d.num_tokens for d in self.domains.values())

    def verify(self) -> None:
        """Check every tokens.bin against its manifest sha256 (reads every byte)."""
        for domain in self.domains.values():
            digest = hashlib.sha256()
            with open(domain.path / TOKENS_FILE, "rb") as handle:
                while block := handle.read(1 << 24):
                    digest.update(block)
            if digest.hexdigest() != domain.sha256:
                raise CorruptStoreError(f"{domain.path / TOKENS_FILE}: checksum does not match "
                                        f"the manifest; re-run gristmill tokenize")

    def check_vocab(self) -> None:
        """Raise InputError naming the domain and document of the first id >= vocab_size."""
        for domain in self.domains.values():
            check_token_ids(self.path, domain, domain.tokens, 0, self.vocab_size)

    def __repr__(self) -> str:
        return (f"TokenStore({str(self.path)!r}, domains={list(self.domains)}, "
                f"docs={self.num_docs}, tokens={self.num_tokens})")


def open_tokens(path: str | Path) -> TokenStore:
    return TokenStore.open(path)


def check_token_ids(store: Path, domain: TokenDomain, ids: np.ndarray, first: int,
                    vocab_size: int) -> None:
    """Raise if any of `ids` (tokens[first:first + len(ids)] of `domain`) is >= vocab_size."""
    if not len(ids):
        return
    bad = np.flatnonzero(np.asarray(ids) >= vocab_size)
    if bad.size:
        position = first + int(bad[0])
        doc = int(np.searchsorted(np.asarray(domain.offsets), position, side="right") - 1)
        doc_id = domain.column("id")[doc]
        raise InputError(f"{store}: domain {domain.name!r} document {doc_id!r} (#{doc}) holds "
                         f"token id {int(np.asarray(ids)[bad[0]])} >= the tokenizer's vocab size "
                         f"{vocab_size}; re-tokenize it with the tokenizer the manifest names")


def _check_domain(root: Path, record: dict[str, Any]) -> TokenDomain:
    path = root / record["path"]
    tokens, offsets = path / TOKENS_FILE, path / OFFSETS_FILE
    for file in (tokens, offsets, path / DOCS_FILE):
        if not file.is_file():
            raise CorruptStoreError(f"{file}: listed in the manifest but missing; "
                                    f"re-run gristmill tokenize")
    num_docs, num_tokens = int(record["docs"]), int(record["tokens"])
    if tokens.stat().st_size != num_tokens * TOKEN_DTYPE.itemsize:
        raise CorruptStoreError(f"{tokens}: {tokens.stat().st_size} bytes, the manifest says "
                                f"{num_tokens} uint32 tokens; the file is truncated or changed")
    try:
        offs = np.load(offsets, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise CorruptStoreError(f"{offsets}: not a readable .npy ({exc})") from exc
    if offs.shape != (num_docs + 1,) or (num_docs and (offs[0] != 0 or offs[-1] != num_tokens)):
        raise CorruptStoreError(f"{offsets}: shape {offs.shape} / bounds do not match the "
                                f"manifest ({num_docs} docs, {num_tokens} tokens)")
    return TokenDomain(root, str(record["name"]), path, num_docs, num_tokens,
                       str(record.get("sha256", "")))


class TokenStoreWriter:
    """Append tokenized documents domain by domain into a (temporary) store directory.

    Example:
        >>> with atomic_directory(out, overwrite=False) as tmp:  # doctest: +SKIP
        ...     writer = TokenStoreWriter(tmp, tokenizer=meta)
        ...     writer.add("web", [[5, 6, 0]], ids=["a"], rows=[0])
        ...     writer.finish(inputs={...})
    """

    def __init__(self, root: Path, *, tokenizer: dict[str, Any]) -> None:
        for key in ("name", "vocab_size", "pad_id", "fingerprint"):
            if key not in tokenizer:
                raise ConfigError(f"tokenizer metadata lacks {key!r}")
        self.root = Path(root)
        self.tokenizer = dict(tokenizer)
        self._domains: dict[str, dict[str, Any]] = {}

    def _open(self, name: str) -> dict[str, Any]:
        if name not in self._domains:
            rel = f"domains/{len(self._domains):03d}"
            path = self.root / rel
            path.mkdir(parents=True)
            self._domains[name] = {
                "rel": rel, "path": path, "handle": open(path / TOKENS_FILE, "wb"),
                "sha": hashlib.sha256(), "lengths": [], "tokens": 0,
                "meta": {f.name: [] for f in DOC_SCHEMA},
            }
        return self._domains[name]

    def add(self, domain: str, docs: list[np.ndarray] | list[list[int]], *, ids: list[str],
            rows: list[int], weights: list[float] | None = None,
            clusters: list[int] | None = None, selectors: list[str] | None = None) -> None:
        """Append documents (token id sequences, each non-empty) to `domain`."""
        state = self._open(domain)
        n = len(docs)
        if not (len(ids) == len(rows) == n):
            raise ConfigError("docs, ids and rows must have the same length")
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=n)
        if n and lengths.min() <= 0:
            bad = int(np.flatnonzero(lengths <= 0)[0])
            raise InputError(f"document {ids[bad]!r} has no tokens; drop empty documents")
        if n:
            flat = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs])
            vocab = int(self.tokenizer["vocab_size"])
            if flat.min() < 0 or flat.max() >= vocab:
                raise InputError(f"domain {domain!r}: a token id is outside [0, {vocab}); the "
                                 f"tokenizer metadata does not match the tokenizer")
            data = flat.astype(TOKEN_DTYPE).tobytes()
            state["handle"].write(data)
            state["sha"].update(data)
            state["tokens"] += int(flat.size)
        state["lengths"].append(lengths)
        meta = state["meta"]
        meta["id"].extend(ids)
        meta["row"].extend(int(r) for r in rows)
        meta["weight"].extend([1.0] * n if weights is None else [float(w) for w in weights])
        meta["cluster"].extend([-1] * n if clusters is None else [int(c) for c in clusters])
        meta["selector"].extend([""] * n if selectors is None else list(selectors))

    def finish(self, *, inputs: dict[str, Any], params: dict[str, Any] | None = None,
               lineage: list[dict[str, Any]] | None = None,
               eos: dict[str, Any] | None = None) -> dict[str, Any]:
        """Close files, write offsets, docs.parquet and the manifest; return the manifest."""
        records = []
        for name, state in self._domains.items():
            handle = state["handle"]
            handle.flush()
            handle.close()
            lengths = (np.concatenate(state["lengths"]) if state["lengths"]
                       else np.zeros(0, np.int64))
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            np.save(state["path"] / OFFSETS_FILE, offsets)
            table = pa.Table.from_pydict(state["meta"], schema=DOC_SCHEMA)
            pq.write_table(table, state["path"] / DOCS_FILE)
            records.append({"name": name, "path": state["rel"], "docs": int(lengths.size),
                            "tokens": int(offsets[-1]), "sha256": state["sha"].hexdigest()})
        fp = fingerprint([self.tokenizer["fingerprint"], repr(sorted(inputs.items())),
                          *(f"{r['name']}:{r['sha256']}" for r in records)])
        manifest = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "gristmill_version": gristmill_version(),
            "created": now_iso(),
            "fingerprint": fp,
            "tokenizer": self.tokenizer,
            "eos": eos or {"appended": False},
            "token_dtype": "uint32",
            "offset_dtype": "int64",
            "docs": sum(r["docs"] for r in records),
            "tokens": sum(r["tokens"] for r in records),
            "domains": records,
            "inputs": inputs,
            "params": params or {},
            "lineage": lineage or [],
        }
        write_json(self.root / MANIFEST_NAME, manifest)
        return manifest
