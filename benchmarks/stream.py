"""Training-stream benchmark: packed batches through a DataLoader with 2 workers, same tokens.

Contenders, each in a fresh ``python`` subprocess, all reading the same token ids (the demo
corpus tokenized once with ``gristmill tokenizer train`` + ``gristmill tokenize``: 8,192-token
byte-level BPE, EOS appended; tiled ``--repeat`` times) through
``torch.utils.data.DataLoader(num_workers=--workers)`` (default 2), one epoch each:

* ``gristmill``: ``GristmillStream(store, seq_len=2048, micro_batch_rows=8, num_epochs=1)`` in
  ``DataLoader(stream, batch_size=None, num_workers=2, collate_fn=no_collate)`` as the README
  says (``--default-collate`` measures it without ``no_collate``): streaming BFD in a
  4,096-segment buffer; batches hold input_ids, labels, position_ids, segment_ids
  ([8, 2048] int64), cu_seqlens and one record per segment.
* ``hf-trl``: Hugging Face ``datasets`` streaming (``load_dataset("parquet", streaming=True)``
  over 4 Parquet files holding the same documents as an ``input_ids`` list<int32> column,
  shuffled once when written), packed by TRL's ``pack_dataset(ds, 2048,
  strategy="bfd_split")`` (``bfd_split`` keeps every token, as gristmill does; ``datasets``
  hands TRL 1,000 documents per ``map`` batch, so each block is packed on its own), then
  ``.with_format("numpy")`` (measured faster than the default Python lists) and
  ``DataLoader(batch_size=8, num_workers=2, collate_fn=...)``: the collate pads each row to
  2048 and builds labels (-100 on padding and on each packed sequence's first token) and
  position_ids (restarting per sequence, from TRL's ``seq_lengths``) with NumPy. With 2
  workers ``datasets`` gives each worker 2 of the 4 files.
* ``mosaic``: MosaicML Streaming's ``StreamingDataset(local=MDS, batch_size=8, shuffle=True)``
  over MDS shards of the same documents (one sample per document, ``ndarray:uint32``
  column, no packing: a batch is 8 documents padded to the longest of them) in the same
  ``DataLoader``. It cannot share our environment (shared/ENVIRONMENT.md section 6), so this
  script runs itself with the Python of a separate venv (``--mosaic-venv``, default
  ``$GRISTMILL_MOSAIC_VENV`` or /work/venvs/mosaic) when one exists, and reports it as
  skipped when not. The MDS shards are written once (cached) before timing.

Throughput = real (non-padding) tokens delivered / wall seconds, from creating the iterator
(workers start) to the last batch; "steady" leaves out the time to the first batch. Efficiency
= real tokens / (batch rows x row width) over every batch delivered. CPU s adds the main
process and its DataLoader workers (reaped after the epoch); peak RSS is shown for the main
process and for the largest worker (``ru_maxrss``; a forked worker's pages shared with its
parent count in both).

Resume at step 10k (``--resume-steps``): in process, no workers, stream 10,000 batches of
``GristmillStream(..., num_epochs=None)`` (several epochs of the demo tokens), take
``state_dict()``, then time ``fresh = GristmillStream(...); fresh.load_state_dict(state);
next(iter(fresh))``, and check the batch equals the one the first stream yields next. Also
reported: the state's pickled size and ``torch.save`` time.

Usage (from the repository root)::

    python benchmarks/stream.py --json benchmarks/_work/stream.json
    python benchmarks/stream.py --repeats 3 --only gristmill,hf-trl --resume-steps 0
    GRISTMILL_MOSAIC_VENV=/path/to/venv python benchmarks/stream.py --only mosaic

Goals printed at the end: gristmill >= 2x the tokens/s of HF datasets + TRL, >= 1x Mosaic
Streaming, resume at step 10k < 1 s. This is a benchmark, not a test: it is not collected by
pytest and asserts nothing.
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
import gc
import json
import pickle
import platform
import resource
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cluster as bench  # benchmarks/cluster.py: the shared measurement code (stdlib only)

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
CONTENDERS = ("gristmill", "hf-trl", "mosaic")
DEFAULT_MOSAIC = Path(os.environ.get("GRISTMILL_MOSAIC_VENV", "/work/venvs/mosaic"))
PARQUET_FILES = 4
GOALS = {"hf-trl": 2.0, "mosaic": 1.0}
GOAL_RESUME_S = 1.0


# ---------------------------------------------------------------------------------------------
# Data: the demo corpus as a token store, tiled; the same ids as Parquet for datasets


def prepare_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Tokenize the demo corpus (cached), write the tiled token store and Parquet files."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gristmill.packing import tokenize_store, train_tokenizer
    from gristmill.storage import ingest
    from gristmill.storage.atomic import atomic_directory
    from gristmill.storage.tokens import TokenStore, TokenStoreWriter

    work = args.work
    started = time.perf_counter()
    corpus = ingest(sorted((ROOT / "data" / "demo").glob("*.parquet")), work / "corpus",
                    domain_field="domain", id_field="id", reuse=True)
    tok = train_tokenizer(corpus.path, work / "tokenizer", vocab_size=8192, reuse=True)
    base = tokenize_store(corpus.path, work / "tokens", tokenizer=tok, reuse=True).store
    tiled = work / f"tokens-x{args.repeat}"
    parquet = work / f"parquet-x{args.repeat}"
    current = (TokenStore.open(tiled).manifest.get("inputs", {}).get("tiled_from")
               if (tiled / "manifest.json").is_file() else None)
    if current != base.fingerprint:  # missing, or tiled from an older tokenization
        with atomic_directory(tiled, overwrite=True) as tmp:
            writer = TokenStoreWriter(tmp, tokenizer=base.tokenizer)
            for name, domain in base.domains.items():
                docs = [domain.doc_tokens(i) for i in range(domain.num_docs)]
                ids = domain.column("id").tolist()
                for r in range(args.repeat):
                    writer.add(name, docs, ids=[f"{i}#{r}" for i in ids],
                               rows=list(range(len(docs))))
            writer.finish(inputs={"tiled_from": base.fingerprint, "repeat": args.repeat},
                          eos=base.manifest["eos"])
        for stale in (parquet, work / f"mds-x{args.repeat}"):
            _remove_tree(stale)
    store = TokenStore.open(tiled)
    if not parquet.is_dir():
        with atomic_directory(parquet, overwrite=True) as tmp:
            rows = [np.asarray(d.doc_tokens(i), dtype=np.int32) for d in store.domains.values()
                    for i in range(d.num_docs)]
            rng = np.random.default_rng(0)  # shuffled once, as a user's prepared dataset is
            rows = [rows[i] for i in rng.permutation(len(rows))]
            for part in range(PARQUET_FILES):
                chunk = rows[part::PARQUET_FILES]
                pq.write_table(pa.table({"input_ids": pa.array(chunk, pa.list_(pa.int32()))}),
                               tmp / f"part-{part}.parquet")
    lengths = np.concatenate([d.lengths for d in store.domains.values()])
    return {"store": str(tiled), "parquet": str(parquet), "tokenizer": str(tok),
            "documents": int(lengths.size), "tokens": int(lengths.sum()),
            "mean_len": float(lengths.mean()), "median_len": float(np.median(lengths)),
            "max_len": int(lengths.max()), "pad_id": store.pad_id,
            "vocab_size": store.vocab_size, "eos": store.manifest["eos"],
            "domains": {n: d.num_docs for n, d in store.domains.items()},
            "seconds": time.perf_counter() - started}


def _remove_tree(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)


# ---------------------------------------------------------------------------------------------
# Measuring one epoch through a DataLoader (used by every contender, Mosaic's venv included)


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def drain(make_iter: Callable[[], Iterable[Any]],
          count: Callable[[Any], tuple[int, int]]) -> dict[str, Any]:
    """Run one epoch; count(batch) -> (real tokens, token slots). Workers are reaped at the end.

    Wall time runs from creating the iterator (which starts the workers) to the last batch.
    """
    self0, children0 = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    busy0 = bench.busy_cpu_seconds()
    real = slots = batches = first_tokens = 0
    first = None
    started = time.perf_counter()
    it = iter(make_iter())
    for batch in it:
        n, s = count(batch)
        if first is None:
            first, first_tokens = time.perf_counter() - started, n
        real, slots, batches = real + n, slots + s, batches + 1
        del batch
    seconds = time.perf_counter() - started
    self1 = _cpu(resource.RUSAGE_SELF)
    del it  # shuts the workers down; they are reaped and their usage becomes visible
    gc.collect()
    children = _cpu(resource.RUSAGE_CHILDREN) - children0
    busy = bench.busy_cpu_seconds() - busy0
    main_cpu = self1 - self0
    first = first or 0.0
    return {"seconds": seconds, "tokens": real, "slots": slots, "batches": batches,
            "first_batch_seconds": first,
            "steady_tokens_per_s": ((real - first_tokens) / (seconds - first)
                                    if batches > 1 and seconds > first else None),
            "main_cpu_seconds": main_cpu, "worker_cpu_seconds": children,
            "other_cpu_seconds": max(0.0, busy - main_cpu - children),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "load_avg_1min_before": os.getloadavg()[0]}


def gristmill_worker(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from gristmill.samplers import GristmillStream, no_collate

    width = args.rows * args.seq_len

    def make() -> Any:
        stream = GristmillStream(data["store"], seq_len=args.seq_len,
                                 micro_batch_rows=args.rows, num_epochs=1)
        return DataLoader(stream, batch_size=None, num_workers=args.workers,
                          collate_fn=None if args.default_collate else no_collate)

    return drain(make, lambda b: (b["num_tokens"], width))


def hf_collate(seq_len: int, pad_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """TRL-packed examples -> [n, seq_len] input_ids / labels / position_ids (NumPy, vectorised
    per row), so the HF contender is not slowed by a Python loop over sequences."""
    import numpy as np
    import torch

    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(examples)
        ids = np.full((n, seq_len), pad_id, dtype=np.int64)
        pos = np.zeros((n, seq_len), dtype=np.int64)
        fill = np.zeros(n, dtype=np.int64)
        for r, ex in enumerate(examples):
            row = np.asarray(ex["input_ids"])
            lens = np.asarray(ex["seq_lengths"], dtype=np.int64)
            k = row.size
            ids[r, :k] = row
            pos[r, :k] = np.arange(k) - np.repeat(np.cumsum(lens) - lens, lens)
            fill[r] = k
        pad = np.arange(seq_len)[None, :] >= fill[:, None]
        labels = np.where(pad | (pos == 0), -100, ids)
        return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
                "position_ids": torch.from_numpy(pos), "num_tokens": int(fill.sum())}

    return collate


def hf_worker(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    from datasets import disable_progress_bars, load_dataset
    from torch.utils.data import DataLoader
    from trl.data_utils import pack_dataset

    disable_progress_bars()
    files = sorted(str(p) for p in Path(data["parquet"]).glob("*.parquet"))
    width = args.rows * args.seq_len
    collate = hf_collate(args.seq_len, data["pad_id"])

    def make() -> Any:
        ds = load_dataset("parquet", data_files=files, split="train", streaming=True)
        packed = pack_dataset(ds, args.seq_len, strategy="bfd_split").with_format("numpy")
        return DataLoader(packed, batch_size=args.rows, num_workers=args.workers,
                          collate_fn=collate)

    return drain(make, lambda b: (b["num_tokens"], width))


def mosaic_worker(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    """Runs under the Mosaic venv's Python: no gristmill import, only numpy/torch/streaming."""
    import numpy as np
    import torch
    from streaming import MDSWriter, StreamingDataset
    from streaming.base.util import clean_stale_shared_memory
    from torch.utils.data import DataLoader

    mds = args.work / f"mds-x{args.repeat}"
    written = None
    if not (mds / "index.json").is_file():
        started = time.perf_counter()
        tmp = mds.with_name(mds.name + ".tmp")
        _remove_tree(tmp)
        manifest = json.loads((Path(data["store"]) / "manifest.json").read_text())
        with MDSWriter(out=str(tmp), columns={"input_ids": "ndarray:uint32"},
                       compression=None) as writer:
            for record in manifest["domains"]:
                folder = Path(data["store"]) / record["path"]
                toks = np.fromfile(folder / "tokens.bin", dtype="<u4")
                offs = np.load(folder / "offsets.npy")
                for i in range(offs.size - 1):
                    writer.write({"input_ids": toks[offs[i]:offs[i + 1]]})
        _remove_tree(mds)
        tmp.rename(mds)
        written = time.perf_counter() - started
    clean_stale_shared_memory()

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        lens = [len(x["input_ids"]) for x in items]
        width = max(lens)
        ids = np.zeros((len(items), width), dtype=np.int64)
        for r, x in enumerate(items):
            ids[r, :lens[r]] = x["input_ids"]
        return {"input_ids": torch.from_numpy(ids), "num_tokens": sum(lens),
                "slots": len(items) * width}

    def make() -> Any:
        ds = StreamingDataset(local=str(mds), batch_size=args.rows, shuffle=True,
                              shuffle_seed=0)
        return DataLoader(ds, batch_size=args.rows, num_workers=args.workers,
                          collate_fn=collate)

    result = drain(make, lambda b: (b["num_tokens"], b["slots"]))
    import streaming

    return {**result, "mds": str(mds), "mds_write_seconds": written,
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "mosaicml-streaming": streaming.__version__,
                         "numpy": np.__version__}}


def resume_worker(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    """Stream --resume-steps batches in process, then time a fresh stream's resume."""
    import io

    import torch

    from gristmill.samplers import GristmillStream

    def make() -> GristmillStream:
        return GristmillStream(data["store"], seq_len=args.seq_len, micro_batch_rows=args.rows,
                               num_epochs=None)

    stream = make()
    it = iter(stream)
    started = time.perf_counter()
    for _ in range(args.resume_steps):
        next(it)
    run_seconds = time.perf_counter() - started
    state = stream.state_dict()
    expected = next(it)
    buf = io.BytesIO()
    t0 = time.perf_counter()
    torch.save(state, buf)
    save_seconds = time.perf_counter() - t0
    buf.seek(0)
    t0 = time.perf_counter()
    loaded = torch.load(buf, weights_only=True)
    load_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    fresh = make()
    t1 = time.perf_counter()
    fresh.load_state_dict(loaded)
    t2 = time.perf_counter()
    got = next(iter(fresh))
    t3 = time.perf_counter()
    same = bool(torch.equal(got["input_ids"], expected["input_ids"])
                and got["segments"] == expected["segments"])
    return {"steps": args.resume_steps, "epoch_at_resume": state["planner"]["epoch"],
            "run_seconds": run_seconds, "resume_seconds": t3 - t0,
            "construct_seconds": t1 - t0, "load_state_dict_seconds": t2 - t1,
            "first_batch_seconds": t3 - t2, "state_pickle_bytes": len(pickle.dumps(state)),
            "torch_save_bytes": buf.getbuffer().nbytes, "torch_save_seconds": save_seconds,
            "torch_load_seconds": load_seconds, "identical_next_batch": same,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("gristmill", "torch", "numpy", "datasets", "trl", "pyarrow", "tokenizers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


WORKERS: dict[str, Callable[[argparse.Namespace, dict[str, Any]], dict[str, Any]]] = {
    "gristmill": gristmill_worker, "hf-trl": hf_worker, "mosaic": mosaic_worker,
    "resume": resume_worker,
}


def worker_main(args: argparse.Namespace) -> None:
    if args.worker == "prepare":
        payload = {"data": prepare_worker(args), "versions": versions()}
    else:
        data = json.loads(args.data.read_text(encoding="utf-8"))
        payload = WORKERS[args.worker](args, data)
    args.result.write_text(json.dumps(payload), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Driver


def child_argv(args: argparse.Namespace, name: str) -> list[str]:
    argv = ["--worker", name, "--work", str(args.work), "--seq-len", str(args.seq_len),
            "--rows", str(args.rows), "--workers", str(args.workers), "--repeat",
            str(args.repeat), "--resume-steps", str(args.resume_steps)]
    if args.data is not None:
        argv += ["--data", str(args.data)]
    return argv + (["--default-collate"] if args.default_collate else [])


def run_mosaic(args: argparse.Namespace) -> dict[str, Any]:
    python = args.mosaic_venv / "bin" / "python"
    if not python.is_file():
        return {"skipped": f"no Mosaic venv at {args.mosaic_venv} (create one: python3 -m venv "
                           f"{args.mosaic_venv} && {args.mosaic_venv}/bin/pip install "
                           f"torch==2.14.1 torchvision==0.29.1 mosaicml-streaming; or pass "
                           f"--mosaic-venv / set GRISTMILL_MOSAIC_VENV)"}
    result = args.work / "stream-mosaic.json"
    result.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(python), str(SCRIPT), *child_argv(args, "mosaic"), "--result",
                           str(result)], check=False, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not result.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"skipped": f"the Mosaic child failed (exit {proc.returncode}): "
                           + " | ".join(tail)}
    payload = json.loads(result.read_text(encoding="utf-8"))
    result.unlink()
    return payload


def run_contender(name: str, args: argparse.Namespace) -> dict[str, Any]:
    if name == "mosaic":
        res = run_mosaic(args)
    else:
        res = bench.run_child(SCRIPT, child_argv(args, name), args.work / "stream-result.json",
                              f"{name} run")
    if "skipped" in res:
        return res
    res["tokens_per_s"] = res["tokens"] / res["seconds"]
    res["efficiency"] = res["tokens"] / res["slots"] if res["slots"] else 0.0
    res["cpu_seconds"] = res["main_cpu_seconds"] + res["worker_cpu_seconds"]
    return res


def _print_table(best: dict[str, dict[str, Any]], title: str) -> Any:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for name in ("contender", "seconds", "M tokens/s", "steady M tok/s", "first batch s",
                 "batches", "efficiency", "CPU s (main + workers)", "peak RSS MiB (main / "
                 "worker)", "other CPU s"):
        table.add_column(name, justify="left" if name == "contender" else "right", no_wrap=True)
    for name, r in best.items():
        if "skipped" in r:
            table.add_row(name, *(["-"] * 9))
            continue
        steady = r["steady_tokens_per_s"]
        table.add_row(name, f"{r['seconds']:.2f}", f"{r['tokens_per_s'] / 1e6:.2f}",
                      "-" if steady is None else f"{steady / 1e6:.2f}",
                      f"{r['first_batch_seconds']:.2f}", f"{r['batches']:,}",
                      f"{r['efficiency']:.4f}",
                      f"{r['cpu_seconds']:.2f} ({r['main_cpu_seconds']:.2f} + "
                      f"{r['worker_cpu_seconds']:.2f})",
                      f"{r['peak_rss_mib']:.0f} / {r['worker_peak_rss_mib']:.0f}",
                      f"{r['other_cpu_seconds']:.2f}")
    console = Console(width=max(Console().width, 160))
    console.print(table)
    console.print("M tokens/s: real tokens / wall seconds from iterator creation (workers "
                  "start) to the last batch; steady: after the first batch; efficiency: real "
                  "tokens / (rows x row width) of the batches delivered (Mosaic pads each batch "
                  "of 8 documents to its longest); other CPU s: busy CPU of other processes "
                  "on the machine during the run (should be near 0)")
    return console


def _goals(best: dict[str, dict[str, Any]], resume: dict[str, Any] | None,
           steps: int) -> tuple[dict[str, Any], list[str]]:
    goals: dict[str, Any] = {}
    lines = []
    g = best.get("gristmill", {})
    for peer, want in GOALS.items():
        p = best.get(peer, {})
        if "tokens_per_s" in g and "tokens_per_s" in p:
            ratio = g["tokens_per_s"] / p["tokens_per_s"]
            steady = (g["steady_tokens_per_s"] / p["steady_tokens_per_s"]
                      if g.get("steady_tokens_per_s") and p.get("steady_tokens_per_s")
                      else None)
            goals[peer] = {"ratio": ratio, "steady_ratio": steady, "goal": want,
                           "met": ratio >= want}
            lines.append(f"goal: gristmill >= {want:g}x {peer} tokens/s: {ratio:.2f}x "
                         f"({'MET' if ratio >= want else 'NOT MET'}; steady state "
                         f"{'-' if steady is None else f'{steady:.2f}x'})")
        else:
            why = p.get("skipped", "not run") if p else "not run"
            lines.append(f"goal: gristmill >= {want:g}x {peer}: not measured ({why})")
    if resume is not None:
        r = resume["resume_seconds"]
        goals["resume"] = {"seconds": r, "goal": GOAL_RESUME_S,
                           "met": r < GOAL_RESUME_S and resume["identical_next_batch"]}
        lines.append(f"goal: resume at step {steps:,} < {GOAL_RESUME_S:g} s: {r:.3f} s "
                     f"({'MET' if goals['resume']['met'] else 'NOT MET'}; next batch "
                     f"identical: {resume['identical_next_batch']})")
    return goals, lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per row (2048)")
    parser.add_argument("--rows", type=int, default=8, help="rows per batch (8)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (2)")
    parser.add_argument("--repeat", type=int, default=10,
                        help="tile the demo tokens this many times (default 10)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per contender, alternating order; the fastest is kept")
    parser.add_argument("--resume-steps", type=int, default=10_000,
                        help="batches streamed before the resume check (0 skips it)")
    parser.add_argument("--only", help=f"comma-separated contenders ({', '.join(CONTENDERS)})")
    parser.add_argument("--default-collate", action="store_true",
                        help="gristmill without collate_fn=no_collate (torch's default_convert)")
    parser.add_argument("--mosaic-venv", type=Path, default=DEFAULT_MOSAIC,
                        help="venv holding mosaicml-streaming (default $GRISTMILL_MOSAIC_VENV "
                             "or /work/venvs/mosaic)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work",
                        help="folder for the cached tokens, Parquet and MDS files")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    for hidden in ("--worker", "--data", "--result"):
        parser.add_argument(hidden, type=None if hidden == "--worker" else Path,
                            help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.work = args.work.resolve()
    if args.worker:
        worker_main(args)
        return
    if min(args.seq_len - 1, args.rows, args.workers + 1, args.repeat, args.repeats) < 1 or \
            args.resume_steps < 0:
        parser.error("--seq-len must be >= 2, --rows, --repeat and --repeats >= 1, --workers "
                     "and --resume-steps >= 0")
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only \
        else list(CONTENDERS)
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        parser.error(f"--only: unknown contender(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(CONTENDERS)}")
    names = list(dict.fromkeys(names))

    mach = bench.machine()
    args.work.mkdir(parents=True, exist_ok=True)
    info = bench.run_child(SCRIPT, child_argv(args, "prepare"), args.work / "stream-prep.json",
                           "preparing the tokens")
    data, ver = info["data"], info["versions"]
    args.data = args.work / "stream-data.json"
    args.data.write_text(json.dumps(data), encoding="utf-8")
    print(f"machine: {mach['cpus']} CPUs ({mach['cpus_usable']} usable), {mach['cpu_model']}, "
          f"{mach['memory_gib']} GiB, load average at start "
          + " / ".join(f"{x:.2f}" for x in mach["load_avg_at_start"]))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()))
    print(f"tokens: demo corpus x {args.repeat}: {data['documents']:,} documents, "
          f"{data['tokens']:,} tokens (mean {data['mean_len']:.0f}, median "
          f"{data['median_len']:.0f}, max {data['max_len']:,}), vocab {data['vocab_size']:,}; "
          f"batches {args.rows} x {args.seq_len}, DataLoader workers {args.workers}",
          flush=True)

    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            res = run_contender(name, args)
            runs[name].append(res)
            if "skipped" in res:
                print(f"run {repeat + 1}/{args.repeats} {name}: SKIPPED: {res['skipped']}",
                      flush=True)
                continue
            print(f"run {repeat + 1}/{args.repeats} {name}: {res['tokens']:,} tokens in "
                  f"{res['batches']:,} batches, {res['seconds']:.2f} s, "
                  f"{res['tokens_per_s'] / 1e6:.2f} M tokens/s, efficiency "
                  f"{res['efficiency']:.4f}, CPU {res['cpu_seconds']:.2f} s, other processes "
                  f"{res['other_cpu_seconds']:.2f} CPU s (load average before "
                  f"{res['load_avg_1min_before']:.2f})", flush=True)
            if res.get("mds_write_seconds"):
                print(f"    (wrote the MDS shards first: {res['mds_write_seconds']:.1f} s, "
                      f"not timed)")
    best: dict[str, dict[str, Any]] = {}
    for name, got in runs.items():
        timed = [r for r in got if "skipped" not in r]
        best[name] = (dict(min(timed, key=lambda r: r["seconds"]),
                           runs=[r["seconds"] for r in timed]) if timed else got[-1])
    resume = None
    if args.resume_steps:
        resume = bench.run_child(SCRIPT, child_argv(args, "resume"),
                                 args.work / "stream-result.json", "resume")
        print(f"resume: {resume['steps']:,} steps streamed in process in "
              f"{resume['run_seconds']:.1f} s (now in epoch {resume['epoch_at_resume']}); "
              f"fresh stream + load_state_dict + first batch "
              f"{1000 * resume['resume_seconds']:.1f} ms (construct "
              f"{1000 * resume['construct_seconds']:.1f}, load_state_dict "
              f"{1000 * resume['load_state_dict_seconds']:.1f}, first batch "
              f"{1000 * resume['first_batch_seconds']:.1f}); state "
              f"{resume['state_pickle_bytes']:,} bytes pickled, torch.save "
              f"{resume['torch_save_bytes']:,} bytes in {1000 * resume['torch_save_seconds']:.1f}"
              f" ms, torch.load(weights_only=True) {1000 * resume['torch_load_seconds']:.1f} ms;"
              f" next batch identical: {resume['identical_next_batch']}", flush=True)
    title = (f"stream: demo tokens x {args.repeat}, one epoch, {args.rows} x {args.seq_len} "
             f"batches, {args.workers} DataLoader workers (fastest of {args.repeats})")
    console = _print_table(best, title)
    goals, lines = _goals(best, resume, args.resume_steps)
    for line in lines:
        console.print(line)
    print("load average at end: " + " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    bench.write_report(args.json, {
        "benchmark": "stream", "machine": mach, **info,
        "settings": {"seq_len": args.seq_len, "rows": args.rows, "workers": args.workers,
                     "repeat": args.repeat, "repeats": args.repeats,
                     "resume_steps": args.resume_steps,
                     "default_collate": args.default_collate,
                     "mosaic_venv": str(args.mosaic_venv)},
        "results": best, "resume": resume, "goals": goals, "verdict": lines})


if __name__ == "__main__":
    main()
