"""The `curate` flow (a whole recipe), one flow per stage, and the run's UI artifacts.

`curate(recipe)` runs ingest -> embed (one mapped task per corpus shard, then one that
publishes the store) -> cluster -> each selector in order -> tokenizer -> tokenize, each as a
cached task (tasks.py), and publishes to the Prefect UI: a markdown
summary (rows per domain before and after each selector, with its parameters), a table
artifact of the same, the cluster-size and selection-by-domain plots inline, and a progress
artifact that advances task by task (shard by shard while embedding). It returns each
task's outcome, `ran` or `cached`.

Outputs under the recipe's `output`:

```
OUT/corpus/  OUT/embeddings/  OUT/clusters/  OUT/selections/01-semdedup/ ...
OUT/tokenizer/  OUT/tokens/
```
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from gristmill.flows import tasks
from gristmill.flows.recipe import Recipe


def _run(task: Any, out: str, **kwargs: Any) -> tuple[str, str]:
    """Submit `task`, wait, and return (result, 'ran' | 'cached'); failures raise."""
    runner = task.with_options(refresh_cache=tasks.output_missing(out))
    future = runner.submit(out=out, **kwargs)
    future.wait()
    state = future.state
    result = state.result()
    return result, "cached" if state.name == "Cached" else "ran"


def _per_cluster(method: str, label: str, target: Path, corpus: str, embeddings: str,
                 clusters: str, pool: str | None, seed: int, params: dict[str, Any],
                 groups: int, runner: str,
                 outcomes: list[dict[str, str]]) -> tuple[str, int]:
    """Map a per-cluster selector over cluster groups (CPU tasks), then merge them; returns
    the selection and the number of group tasks."""
    refresh = tasks.output_missing(target)
    split = tasks.cluster_groups(corpus, embeddings, clusters, pool, groups)
    with _resources(runner, gpu=False):
        futures = [tasks.select_group_task.with_options(refresh_cache=refresh).submit(
            method=method, corpus=corpus, embeddings=embeddings, clusters=clusters, pool=pool,
            group=group, seed=seed, params=params) for group in split]
    parts = []
    for i, future in enumerate(futures):
        future.wait()
        state = future.state
        parts.append(state.result())
        outcomes.append({"task": f"select {label} group {i}", "output": str(target),
                         "outcome": "cached" if state.name == "Cached" else "ran"})
    result, how = _run(tasks.merge_groups_task, str(target), method=method, corpus=corpus,
                       embeddings=embeddings, clusters=clusters, pool=pool, seed=seed,
                       params=params, parts=parts)
    outcomes.append({"task": f"select {label}", "outcome": how, "output": result})
    return result, len(split)


def _resources(runner: str, *, gpu: bool) -> Any:
    """Ray resource requests for the tasks submitted inside (a no-op for the local runner)."""
    from contextlib import nullcontext

    if runner != "ray":
        return nullcontext()
    import torch
    from prefect_ray.context import remote_options

    wants_gpu = gpu and torch.cuda.is_available()
    return remote_options(num_gpus=1) if wants_gpu else remote_options(num_cpus=1)


def _image_markdown(path: Path, title: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f"### {title}\n\n![{title}](data:image/png;base64,{data})\n\n`{path}`\n"


def _domain_rows(selection: str) -> list[dict[str, Any]]:
    stats = Path(selection) / "_stats" / "stats.json"
    if not stats.is_file():
        return []
    return list(json.loads(stats.read_text()).get("by_domain", []))


@flow(name="curate", log_prints=True)
def curate(recipe: dict[str, Any], runner: str = "local") -> dict[str, Any]:
    """Run a curation recipe (a dict as `Recipe` validates it; paths already absolute).

    `runner="ray"` (set by `gristmill curate --runner ray`) asks Ray for one GPU per
    embedding task when CUDA is visible, else one CPU; the task runner itself is chosen by
    the caller (`curate.with_options(task_runner=...)`).
    """
    r = Recipe.model_validate(recipe)
    log = get_run_logger()
    out = Path(r.output)
    outcomes: list[dict[str, str]] = []
    total = 5 + len(r.selectors)
    progress = create_progress_artifact(progress=0.0, key=None,
                                        description=f"{r.name}: stages done")

    def step(name: str, task: Any, target: Path, **kwargs: Any) -> str:
        with _resources(runner, gpu=name == "embed"):
            result, how = _run(task, str(target), **kwargs)
        outcomes.append({"task": name, "outcome": how, "output": result})
        log.info("%s %s -> %s", name, how, result)
        update_progress_artifact(progress, progress=100.0 * len(outcomes) / total)
        return result

    corpus = step("ingest", tasks.ingest_task, out / "corpus", inputs=r.inputs,
                  options=r.ingest.model_dump(exclude_none=True))
    embed_options = r.embed.model_dump(exclude_none=True)
    target = out / "embeddings"
    shards = tasks.prepare_embedding(corpus, str(target), r.model, embed_options)
    total += shards
    refresh = tasks.output_missing(target)
    with _resources(runner, gpu=True):
        futures = [tasks.embed_shard_task.with_options(refresh_cache=refresh).submit(
            corpus=corpus, out=str(target), model=r.model, options=embed_options, shard=i)
            for i in range(shards)]
    for i, future in enumerate(futures):
        future.wait()
        state = future.state
        outcomes.append({"task": f"embed shard {i}", "output": state.result(),
                         "outcome": "cached" if state.name == "Cached" else "ran"})
        update_progress_artifact(progress, progress=100.0 * len(outcomes) / total)
    embeddings = step("embed", tasks.embed_task, target, corpus=corpus, model=r.model,
                      options=embed_options)
    clusters = step("cluster", tasks.cluster_task, out / "clusters", embeddings=embeddings,
                    k=r.k, seed=r.seed, options=r.cluster.model_dump())
    pool: str | None = None
    selections: list[tuple[str, str]] = []
    for s, folder in zip(r.selectors, r.step_dirs(), strict=True):
        seed = r.seed if s.seed is None else s.seed
        target = out / "selections" / folder
        if s.method in tasks.PER_CLUSTER and s.budget is None and r.cluster_groups > 1 \
                and "keep_fraction" not in s.params:
            pool, groups = _per_cluster(s.method, s.label, target, corpus, embeddings,
                                        clusters, pool, seed, s.params, r.cluster_groups,
                                        runner, outcomes)
            total += groups
            update_progress_artifact(progress, progress=100.0 * len(outcomes) / total)
        else:
            pool = step(f"select {s.label}", tasks.select_task, target, method=s.method,
                        corpus=corpus, embeddings=embeddings, clusters=clusters, pool=pool,
                        budget=None if s.budget is None else str(s.budget), seed=seed,
                        params=s.params)
        selections.append((s.label, pool))
    tokens = None
    if r.tokenizer is not None:
        if isinstance(r.tokenizer, str):
            tokenizer = r.tokenizer
            total -= 1
        else:
            tokenizer = step("tokenizer", tasks.tokenizer_task, out / "tokenizer", corpus=corpus,
                             vocab_size=r.tokenizer.vocab_size,
                             min_frequency=r.tokenizer.min_frequency)
        tokens = step("tokenize", tasks.tokenize_task, out / "tokens", corpus=corpus,
                      tokenizer=tokenizer, selection=pool)
    _artifacts(r, clusters, selections, tokens, outcomes)
    ran = sum(o["outcome"] == "ran" for o in outcomes)
    return {"outcomes": outcomes, "ran": ran, "cached": len(outcomes) - ran,
            "outputs": {"corpus": corpus, "embeddings": embeddings, "clusters": clusters,
                        "selections": dict(selections), "tokens": tokens}}


def _artifacts(r: Recipe, clusters: str, selections: list[tuple[str, str]],
               tokens: str | None, outcomes: list[dict[str, str]]) -> None:
    """Markdown summary, a table of rows per domain per step, and the plots inline."""
    by_step = [(label, _domain_rows(path)) for label, path in selections]
    domains = sorted({row["domain"] for _, rows in by_step for row in rows})
    table: list[dict[str, Any]] = []
    for domain in domains:
        entry: dict[str, Any] = {"domain": domain}
        for i, (label, rows) in enumerate(by_step):
            row = next((x for x in rows if x["domain"] == domain), None)
            if i == 0:
                entry["pool"] = row["pool"] if row else 0
            entry[label] = row["selected"] if row else 0
        table.append(entry)
    lines = [f"# {r.name}: curation summary", "", f"Output: `{r.output}`", "",
             "| task | outcome |", "|---|---|"]
    lines += [f"| {o['task']} | {o['outcome']} |" for o in outcomes]
    if table:
        heads = list(table[0])
        lines += ["", "## Rows per domain, before and after each selector", "",
                  "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(f"{row[h]:,}" if isinstance(row[h], int) else str(row[h])
                                    for h in heads) + " |" for row in table]
    lines += ["", "## Selectors", ""]
    for s in r.selectors:
        shown = {"budget": s.budget, "seed": s.seed, **s.params}
        lines.append(f"- **{s.label}** ({s.method}): " + ", ".join(
            f"{k}={v}" for k, v in shown.items() if v is not None))
    if tokens:
        manifest = json.loads((Path(tokens) / "manifest.json").read_text())
        lines += ["", f"Tokens: {manifest['docs']:,} documents, {manifest['tokens']:,} tokens "
                      f"({manifest['tokenizer']['name']})"]
    lines += ["", _image_markdown(Path(clusters) / "cluster_sizes.png", "Cluster sizes")]
    for label, path in selections:
        lines.append(_image_markdown(Path(path) / "_stats" / "by_domain.png",
                                     f"{label}: rows by domain"))
    create_markdown_artifact("\n".join(lines), key=_key(r.name, "summary"),
                             description=f"{r.name}: curation summary")
    if table:
        create_table_artifact(table, key=_key(r.name, "rows-by-domain"),
                              description=f"{r.name}: rows per domain after each selector")


def _key(name: str, what: str) -> str:
    """Artifact keys: lowercase letters, digits and dashes."""
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "curate"
    return f"{slug}-{what}"


# -- one flow per stage -----------------------------------------------------------------------


@flow(name="ingest")
def ingest_flow(inputs: list[str], out: str, options: dict[str, Any] | None = None) -> str:
    return _run(tasks.ingest_task, out, inputs=inputs, options=options or {})[0]


@flow(name="embed")
def embed_flow(corpus: str, out: str, model: str | None = None,
               options: dict[str, Any] | None = None) -> str:
    return _run(tasks.embed_task, out, corpus=corpus, model=model, options=options or {})[0]


@flow(name="cluster")
def cluster_flow(embeddings: str, out: str, k: str | int = "auto", seed: int = 0,
                 options: dict[str, Any] | None = None) -> str:
    return _run(tasks.cluster_task, out, embeddings=embeddings, k=k, seed=seed,
                options=options or {})[0]


@flow(name="select")
def select_flow(method: str, corpus: str, embeddings: str, out: str,
                clusters: str | None = None, pool: str | None = None,
                budget: str | None = None, seed: int = 0,
                params: dict[str, Any] | None = None) -> str:
    return _run(tasks.select_task, out, method=method, corpus=corpus, embeddings=embeddings,
                clusters=clusters, pool=pool, budget=budget, seed=seed,
                params=params or {})[0]


@flow(name="tokenize")
def tokenize_flow(corpus: str, out: str, tokenizer: str, selection: str | None = None) -> str:
    return _run(tasks.tokenize_task, out, corpus=corpus, tokenizer=tokenizer,
                selection=selection)[0]


STAGE_FLOWS = {"ingest": ingest_flow, "embed": embed_flow, "cluster": cluster_flow,
               "select": select_flow, "tokenize": tokenize_flow, "curate": curate}
