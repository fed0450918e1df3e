"""`gristmill demo`: run the pipeline on the bundled demo corpus, on CPU, end to end.

It runs the demo recipe (`DEMO_RECIPE`) through the Prefect `curate` flow, outputs under
`out/demo/`: ingest (corpus/), embed with the packaged all-MiniLM-L6-v2 (embeddings/, ~2.5 min
for the 5,014 documents on 2 CPU cores), cluster (spherical FAISS k-means, k auto), SemDeDup at
eps 0.05 (selections/01-semdedup) and concept-complexity pruning (DBP) of what it kept down to
half (selections/02-dbp), a byte-level BPE of 8,192 tokens trained on the corpus (tokenizer/)
and the DBP selection tokenized (tokens/). Then it streams one epoch of packed 2,048-token rows
with end-of-training upsampling of `math` over the last 20 % of tokens (stats and a domain-mix
plot in `stream/`). Re-running hits the flow's cache: nothing up to date is redone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.errors import InputError
from gristmill.plots import plot_domain_mix
from gristmill.samplers import GristmillStream, Schedule
from gristmill.storage import atomic_directory, summarize
from gristmill.storage.clusters import ClusterStore
from gristmill.storage.corpus import CorpusStore
from gristmill.storage.embeddings import EmbeddingStore
from gristmill.storage.schema import write_json
from gristmill.storage.selection import read_selection
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


DEMO_RECIPE: dict[str, Any] = {
    "name": "demo",
    "k": "auto",
    "selectors": [{"method": "semdedup", "eps": 0.05}, {"method": "dbp", "budget": 0.5}],
    "tokenizer": {"vocab_size": 8192},
}


def demo_recipe(out: Path) -> dict[str, Any]:
    """The demo as a curate recipe over the bundled corpus, writing under `out`."""
    return {**DEMO_RECIPE, "inputs": [str(demo_corpus_path())], "output": str(out)}


def run_demo(out: str | Path = "out/demo", *, progress: bool = True) -> DemoResult:
    """Run the demo recipe through the Prefect `curate` flow, then stream one epoch.

    Example:
        >>> result = run_demo("out/demo")          # doctest: +SKIP
        >>> result.outputs["corpus"]               # doctest: +SKIP
        PosixPath('out/demo/corpus')
    """
    from gristmill.flows.recipe import load_recipe
    from gristmill.flows.run import run_curate

    out = Path(out).resolve()
    result = DemoResult()
    flow = run_curate(load_recipe(data=demo_recipe(out)))
    status = {o["task"]: "up to date" if o["outcome"] == "cached" else "written"
              for o in flow["outcomes"]}
    outputs = flow["outputs"]
    names = {"corpus": "ingest", "embeddings": "embed", "clusters": "cluster"}
    for stage, task in names.items():
        result.outputs[stage] = Path(outputs[stage])
        result.status[stage] = status[task]
    corpus = CorpusStore.open(outputs["corpus"])
    result.summary["corpus"] = summarize(corpus)
    emb = EmbeddingStore.open(outputs["embeddings"])
    result.summary["embeddings"] = (f"embeddings: {emb.manifest['embedded']:,} docs x "
                                    f"{emb.dim} ({emb.manifest['model']})")
    clusters = ClusterStore.open(outputs["clusters"])
    result.summary["clusters"] = f"clusters: k={clusters.k}"
    for label, path in outputs["selections"].items():
        manifest = read_selection(path).manifest
        result.outputs[label] = Path(path)
        result.status[label] = status[f"select {label}"]
        result.summary[label] = (f"{label}: kept {manifest['rows']:,} of "
                                 f"{manifest['pool']['rows']:,} rows")
    result.outputs["tokenizer"] = out / "tokenizer"
    result.status["tokenizer"] = status["tokenizer"]
    tokens = TokenStore.open(outputs["tokens"])
    result.outputs["tokens"] = tokens.path
    result.status["tokens"] = status["tokenize"]
    result.summary["tokens"] = (f"tokens: {tokens.num_docs:,} documents, "
                                f"{tokens.num_tokens:,} tokens, vocab {tokens.vocab_size}")
    result.summary["flow"] = f"curate flow tasks: {flow['ran']} ran, {flow['cached']} cached"
    _stream(out, tokens, result)
    return result


def _stream(out: Path, tokens: TokenStore, result: DemoResult) -> None:
    """One streamed epoch with upsampling: stats.json and domain_mix.png in `out/stream`."""
    stats_dir = out / "stream"
    stats_file = stats_dir / "stats.json"
    if stats_file.is_file():
        saved = json.loads(stats_file.read_text())
        if saved.get("tokens_fingerprint") == tokens.fingerprint:
            result.outputs["stream"], result.status["stream"] = stats_dir, "up to date"
            result.summary["stream"] = saved["summary"]
            return
    stats = stream_epoch(tokens.path)
    with atomic_directory(stats_dir, overwrite=True) as tmp:
        plot_domain_mix(np.array(stats.pop("_tokens")), stats.pop("_shares"),
                        tmp / "domain_mix.png", switch=stats["schedule_switch_tokens"],
                        title="demo stream: natural mix, then math upsampled (last 20 %)")
        stats["tokens_fingerprint"] = tokens.fingerprint
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
