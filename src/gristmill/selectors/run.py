"""`run_selection`: what `gristmill select` does — load, check, select, publish.

Everything a user can get wrong is checked before any work: the method name, the output path,
the stores' fingerprints, the budget, NaN vectors. With `k` and no cluster store, methods that
need clusters get k-means computed on the fly (kept inside the selection under `_clusters/`,
so its lineage is complete).
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from gristmill.selectors import load_pool, select, selector_module
from gristmill.selectors.output import WrittenSelection, write_selection
from gristmill.storage.atomic import check_output

log = logging.getLogger(__name__)


def run_selection(method: str, *, corpus: str | Path, embeddings: str | Path, out: str | Path,
                  budget: str | int | None = None, clusters: str | Path | None = None,
                  pool: str | Path | None = None, seed: int = 0, k: str | int | None = None,
                  overwrite: bool = False, params: dict[str, Any] | None = None,
                  reuse: bool = False, progress: bool = False) -> WrittenSelection:
    """Run selector `method` over the stores and write the selection store `out`.

    With `reuse`, an existing output made by the same request over the same inputs is
    returned as it is (`manifest["request_key"]` records the request).

    Example:
        >>> run_selection("dbp", corpus="out/corpus", embeddings="out/emb",
        ...               clusters="out/clusters", budget="0.5", out="out/sel")  # doctest: +SKIP
    """
    module = selector_module(method)
    out = Path(out)
    params = {key: value for key, value in (params or {}).items() if value is not None}
    key = _request_key(method, budget, seed, k, params, corpus, embeddings, clusters, pool)
    if reuse and not overwrite:
        existing = _existing(out, key)
        if existing is not None:
            return existing
    check_output(out, overwrite=overwrite)
    scratch = None
    if clusters is None and k is not None and getattr(module, "NEEDS_CLUSTERS", False):
        scratch = _cluster_on_the_fly(embeddings, out, k, seed)
        clusters = scratch
    try:
        loaded = load_pool(corpus, embeddings, clusters=clusters, pool=pool, progress=progress)
        result = select(method, loaded, budget, seed=seed, **params)
        log.info("%s kept %d of %d rows (%s)", method, len(result.selected), loaded.size,
                 result.params)
        return write_selection(out, loaded, result, method=method,
                               budget=None if budget is None else str(budget), seed=seed,
                               overwrite=overwrite or reuse, extra_inputs=_inputs(params),
                               request_key=key,
                               attach={"_clusters": scratch} if scratch else None)
    finally:
        if scratch is not None and scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def _cluster_on_the_fly(embeddings: str | Path, out: Path, k: str | int, seed: int) -> Path:
    from gristmill.selectors.clustering import cluster_embeddings

    scratch = out.parent / f".{out.name}.clusters-{uuid.uuid4().hex[:8]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("no --clusters given: clustering %s with k=%s", embeddings, k)
    cluster_embeddings(embeddings, scratch, k=k, seed=seed)
    return scratch


def _inputs(params: dict[str, Any]) -> dict[str, Any]:
    """Record a target set given as a path (its manifest's fingerprint when it has one)."""
    target = params.get("target")
    if not isinstance(target, str | Path):
        return {}
    path = Path(target)
    record: dict[str, Any] = {"path": str(path)}
    manifest = path / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        record.update(kind=data.get("kind"), fingerprint=data.get("fingerprint"))
    return {"target": record}


def _fingerprint_of(path: str | Path | None) -> str:
    if path is None:
        return "-"
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return str(path)
    return str(json.loads(manifest.read_text()).get("fingerprint"))


def _request_key(method: str, budget: Any, seed: int, k: Any, params: dict[str, Any],
                 *stores: str | Path | None) -> str:
    from gristmill.storage.schema import fingerprint

    return fingerprint([method, str(budget), str(seed), str(k),
                        repr(sorted((a, str(b)) for a, b in params.items())),
                        *(_fingerprint_of(s) for s in stores)])


def _existing(out: Path, key: str) -> WrittenSelection | None:
    manifest = out / "manifest.json"
    if not manifest.is_file():
        return None
    data = json.loads(manifest.read_text())
    if data.get("request_key") != key:
        return None
    return WrittenSelection(out, data, status="up to date")
