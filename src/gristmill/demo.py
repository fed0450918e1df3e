"""`gristmill demo`: run the pipeline on the bundled demo corpus, on CPU, end to end.

Stages: ingest + info, embed (the packaged all-MiniLM-L6-v2, ~2.5 min for the 5,014
documents on 2 CPU cores), cluster (spherical FAISS k-means, k auto), then select: SemDeDup at
eps 0.05 and concept-complexity pruning (DBP) of what it kept down to half; then train a
byte-level BPE (8,192 tokens) on the corpus, tokenize the DBP selection, and stream one epoch of
packed 2,048-token rows with end-of-training upsampling of `math` over the last 20 % of tokens
(stats and a domain-mix plot in `stream/`). Re-running reuses outputs that are up to date.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.embed import embed_store
from gristmill.errors import InputError
from gristmill.packing import tokenize_store, train_tokenizer
from gristmill.plots import plot_domain_mix
from gristmill.samplers import GristmillStream, Schedule
from gristmill.selectors.clustering import cluster_embeddings
from gristmill.selectors.run import run_selection
from gristmill.storage import atomic_directory, ingest, summarize
from gristmill.storage.schema import write_json
from gristmill.storage.tokens import TokenStore

DEMO_DOMAINS = ("python_docs", "python_code", "speeches", "math", "code_tasks", "dialogue")


def demo_corpus_path() -> Path:
    """Where the demo corpus lies: $GRISTMILL_DEMO_DATA, inside the wheel, or the source tree."""
    candidates = [
        Path(os.environ["GRISTMILL_DEMO_DATA"]) if "GRISTMILL_DEMO_DATA" in os.environ else None,
        Path(__file__).parent / "_demo",  # wheel installs (pyproject force-include)
        Path(__file__).resolve().parents[2] / "data" / "demo",  # editable install / checkout
    ]
    for path in candidates:
        if path is not None and any(path.glob("*.parquet")):
            return path
    raise InputError(
        "demo corpus not found (looked in $GRISTMILL_DEMO_DATA, the package and data/demo); "
        "run from a gristmill checkout or set GRISTMILL_DEMO_DATA"
    )


@dataclass
class DemoResult:
    """Where each output went, and the summaries to print."""

    outputs: dict[str, Path] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)  # "written" or "up to date"
    summary: dict[str, Any] = field(default_factory=dict)


def run_demo(out: str | Path = "out/demo", *, progress: bool = True) -> DemoResult:
    """Ingest the demo corpus into `out/corpus`, summarize it, embed it into `out/embeddings`.

    Example:
        >>> result = run_demo("out/demo")          # doctest: +SKIP
        >>> result.outputs["corpus"]               # doctest: +SKIP
        PosixPath('out/demo/corpus')
    """
    out = Path(out)
    result = DemoResult()
    before = _mtime(out / "corpus" / "manifest.json")
    corpus = ingest(
        sorted(demo_corpus_path().glob("*.parquet")), out / "corpus",
        domain_field="domain", id_field="id", progress=progress, reuse=True,
    )
    result.outputs["corpus"] = corpus.path
    result.status["corpus"] = "up to date" if _mtime(corpus.path / "manifest.json") == before \
        else "written"
    result.summary["corpus"] = summarize(corpus)
    embedded = embed_store(corpus.path, out / "embeddings", progress=progress)
    result.outputs["embeddings"] = embedded.store.path
    result.status["embeddings"] = embedded.status
    result.summary["embeddings"] = embedded.summary()
    _select(out, corpus.path, embedded.store.path, result, progress)
    _stream(out, corpus.path, result, progress)
    return result


def _select(out: Path, corpus: Path, embeddings: Path, result: DemoResult,
            progress: bool) -> None:
    """Cluster, then SemDeDup (eps 0.05), then DBP over what SemDeDup kept (half of it)."""
    clustered = cluster_embeddings(embeddings, out / "clusters", k="auto", progress=progress)
    result.outputs["clusters"] = clustered.store.path
    result.status["clusters"] = clustered.status
    result.summary["clusters"] = clustered.summary()
    steps = [("semdedup", None, None, {"eps": 0.05}), ("dbp", "0.5", out / "semdedup", {})]
    for method, budget, pool, params in steps:
        written = run_selection(method, corpus=corpus, embeddings=embeddings,
                                clusters=clustered.store.path, pool=pool, budget=budget,
                                out=out / method, params=params, reuse=True,
                                progress=progress)
        result.outputs[method] = written.path
        result.status[method] = written.status
        result.summary[method] = (f"{method}: kept {written.manifest['rows']:,} of "
                                  f"{written.manifest['pool']['rows']:,} rows")


def _stream(out: Path, corpus: Path, result: DemoResult, progress: bool) -> None:
    """Tokenizer, token store of the DBP selection, and one streamed epoch with upsampling."""
    before = _mtime(out / "tokenizer" / "tokenizer.json")
    tokenizer = train_tokenizer(corpus, out / "tokenizer", vocab_size=8192, reuse=True,
                                progress=progress)
    result.outputs["tokenizer"] = tokenizer
    result.status["tokenizer"] = "up to date" if _mtime(tokenizer / "tokenizer.json") == before \
        else "written"
    tokens = tokenize_store(corpus, out / "tokens", tokenizer=tokenizer, selection=out / "dbp",
                            reuse=True, progress=progress)
    result.outputs["tokens"] = tokens.store.path
    result.status["tokens"] = tokens.status
    result.summary["tokens"] = (f"tokens: {tokens.store.num_docs:,} documents, "
                                f"{tokens.store.num_tokens:,} tokens, "
                                f"vocab {tokens.store.vocab_size}")
    stats_dir = out / "stream"
    stats_file = stats_dir / "stats.json"
    if stats_file.is_file():
        saved = json.loads(stats_file.read_text())
        if saved.get("tokens_fingerprint") == tokens.store.fingerprint:
            result.outputs["stream"], result.status["stream"] = stats_dir, "up to date"
            result.summary["stream"] = saved["summary"]
            return
    stats = stream_epoch(tokens.store.path)
    with atomic_directory(stats_dir, overwrite=True) as tmp:
        plot_domain_mix(np.array(stats.pop("_tokens")), stats.pop("_shares"),
                        tmp / "domain_mix.png", switch=stats["schedule_switch_tokens"],
                        title="demo stream: natural mix, then math upsampled (last 20 %)")
        stats["tokens_fingerprint"] = tokens.store.fingerprint
        write_json(tmp / "stats.json", stats)
    result.outputs["stream"], result.status["stream"] = stats_dir, "written"
    result.summary["stream"] = stats["summary"]


def stream_epoch(tokens: Path, *, seq_len: int = 2048, rows: int = 8,
                 upsample: str = "math", fraction: float = 0.2,
                 buffer_docs: int = 256) -> dict[str, Any]:
    """One epoch of the training stream: natural shares, then `upsample` x3 at the end."""
    store = TokenStore.open(tokens)
    natural = {name: d.num_tokens / store.num_tokens for name, d in store.domains.items()}
    boosted = {name: w * (3.0 if name == upsample else 1.0) for name, w in natural.items()}
    schedule = Schedule.upsample_at_end(natural, boosted, total=store.num_tokens,
                                        fraction=fraction)
    # A small packing buffer: rows are shuffled within a buffer's worth of documents, which
    # would hide the switch on a corpus this small (the default 4096 holds all of it).
    stream = GristmillStream(store, seq_len=seq_len, micro_batch_rows=rows, schedule=schedule,
                             num_epochs=1, seed=0, buffer_docs=buffer_docs)
    consumed, real, batches, used_rows = 0, 0, 0, 0
    xs: list[int] = []
    shares: dict[str, list[float]] = {name: [] for name in store.domains}
    per_domain = dict.fromkeys(store.domains, 0)
    for batch in stream:
        batches += 1
        counts = dict.fromkeys(store.domains, 0)
        for seg in batch["segments"]:
            counts[seg["domain"]] += seg["end"] - seg["start"]
        n = max(1, sum(counts.values()))
        for name in store.domains:
            shares[name].append(counts[name] / n)
            per_domain[name] += counts[name]
        used_rows += int((batch["segment_ids"] >= 0).any(dim=1).sum())
        consumed += batch["num_tokens"]
        real += batch["num_tokens"]
        xs.append(consumed)
    efficiency = real / max(1, used_rows * seq_len)  # over rows holding tokens
    overall = real / max(1, batches * rows * seq_len)  # padding rows of the last batch too
    summary = (f"stream: {batches} batches of {rows} x {seq_len}, {real:,} tokens, packing "
               f"efficiency {100 * efficiency:.2f}% ({100 * overall:.2f}% with the last "
               f"batch's padding rows), {upsample} upsampled from token "
               f"{schedule.switch_tokens:,}")
    return {"summary": summary, "batches": batches, "tokens": real, "efficiency": efficiency,
            "efficiency_with_padding_rows": overall, "rows": used_rows,
            "seq_len": seq_len, "micro_batch_rows": rows, "tokens_by_domain": per_domain,
            "schedule_switch_tokens": schedule.switch_tokens, "schedule": schedule.describe(),
            "stream_stats": stream.stats(), "_tokens": xs, "_shares": shares}


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None
