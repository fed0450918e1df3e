"""`gristmill demo`: run the pipeline on the bundled demo corpus, on CPU, end to end.

Stages so far: ingest + info, embed (the packaged all-MiniLM-L6-v2, ~2.5 min for the 5,014
documents on 2 CPU cores), cluster (spherical FAISS k-means, k auto), then select: SemDeDup at
eps 0.05 and concept-complexity pruning (DBP) of what it kept down to half. Each later stage
(pack, stream) extends `run_demo`. Re-running reuses outputs that are up to date.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gristmill.embed import embed_store
from gristmill.errors import InputError
from gristmill.selectors.clustering import cluster_embeddings
from gristmill.selectors.run import run_selection
from gristmill.storage import ingest, summarize

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


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None
