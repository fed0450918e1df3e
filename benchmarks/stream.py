"""Training-stream benchmark: packed batches through a DataLoader with 2 workers, same tokens.

Contenders, each in a fresh ``python`` subprocess, all reading the same token ids (the demo
corpus tokenized once with ``gristmill tokenizer train`` + ``gristmill tokenize``, 8,192-token
byte-level BPE, EOS appended, tiled ``--repeat`` times) and yielding batches of ``--rows`` x
``--seq-len`` (default 8 x 2048) through ``torch.utils.data.DataLoader(num_workers=2)``:

* ``gristmill``: ``GristmillStream(store, seq_len, micro_batch_rows, num_epochs=1)`` with
  ``DataLoader(batch_size=None, num_workers=2, collate_fn=no_collate)`` as the README says
  (``--default-collate`` measures it without): streaming BFD in a 4,096-segment buffer,
  input_ids / labels / position_ids / cu_seqlens / segment_ids and the segment records.
* ``hf-trl``: Hugging Face ``datasets`` streaming (``load_dataset("parquet", streaming=True)``
  over 4 Parquet files of an ``input_ids`` list column) packed by TRL's
  ``pack_dataset(strategy="bfd_split")`` (keeps every token, as gristmill does; TRL packs each
  ``map`` batch of 1,000 documents on its own), batched 8 rows per step by the DataLoader with a
  collate that pads to seq_len and builds labels and position_ids from TRL's ``seq_lengths``.
* ``mosaic``: MosaicML Streaming's ``StreamingDataset`` over MDS shards of the same documents
  (one sample per document, no packing; batches of 8 documents padded to their longest). It
  cannot share our environment (shared/ENVIRONMENT.md section 6), so it runs with the Python
  of a separate venv (``--mosaic-venv``, default ``$GRISTMILL_MOSAIC_VENV`` or
  /work/venvs/mosaic) when one exists, and is reported as skipped when not.

Throughput is real (non-padding) tokens delivered per second of wall time, from creating the
iterator to the last batch. Efficiency is real tokens / (rows x seq_len) over every row
delivered. A separate in-process run measures **resume at step 10k**: stream 10,000 batches
(num_epochs=None, in process), take ``state_dict()``, then time a fresh stream's
``load_state_dict`` + first batch; it also reports the state's pickled size.

Usage (from the repository root)::

    python benchmarks/stream.py --json benchmarks/_work/stream.json
    python benchmarks/stream.py --repeat 2 --only gristmill --resume-steps 1000

Goals printed at the end: gristmill >= 2x HF datasets + TRL, >= 1x Mosaic, resume < 1 s.
This is a benchmark, not a test: it is not collected by pytest and asserts nothing.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

import argparse
import json
import pickle
import subprocess
import time
from pathlib import Path
from typing import Any

import cluster as bench  # benchmarks/cluster.py: the shared measurement code

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
CONTENDERS = ("gristmill", "hf-trl", "mosaic")
DEFAULT_MOSAIC = Path(os.environ.get("GRISTMILL_MOSAIC_VENV", "/work/venvs/mosaic"))


# ---------------------------------------------------------------------------------------------
# Data: the demo corpus as a token store, tiled; the same ids as Parquet for datasets


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Tokenize the demo corpus (cached), write the tiled token store and Parquet files."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gristmill.packing import tokenize_store, train_tokenizer
    from gristmill.storage import ingest
    from gristmill.storage.atomic import atomic_directory
    from gristmill.storage.tokens import TokenStore, TokenStoreWriter

    work = args.work
    corpus = ingest(sorted((ROOT / "data" / "demo").glob("*.parquet")), work / "corpus",
                    domain_field="domain", id_field="id", reuse=True)
    tok = train_tokenizer(corpus.path, work / "tokenizer", vocab_size=8192, reuse=True)
    base = tokenize_store(corpus.path, work / "tokens", tokenizer=tok, reuse=True).store
    tiled = work / f"tokens-x{args.repeat}"
    parquet = work / f"parquet-x{args.repeat}"
    if not (tiled / "manifest.json").is_file():
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
    store = TokenStore.open(tiled)
    if not parquet.is_dir():
        tmp = parquet.with_name(parquet.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        rows = [np.asarray(d.doc_tokens(i), dtype=np.int32) for d in store.domains.values()
                for i in range(d.num_docs)]
        rng = np.random.default_rng(0)  # shuffled once, as a user's prepared dataset would be
        rows = [rows[i] for i in rng.permutation(len(rows))]
        for part in range(4):
            chunk = rows[part::4]
            pq.write_table(pa.table({"input_ids": pa.array(chunk, pa.list_(pa.int32()))}),
                           tmp / f"part-{part}.parquet")
        tmp.rename(parquet)
    lengths = np.concatenate([d.lengths for d in store.domains.values()])
    return {"store": str(tiled), "parquet": str(parquet), "documents": int(lengths.size),
            "tokens": int(lengths.sum()), "mean_len": float(lengths.mean()),
            "max_len": int(lengths.max()), "pad_id": store.pad_id}


# ---------------------------------------------------------------------------------------------
# Children


def gristmill_worker(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from gristmill.samplers import GristmillStream, no_collate

    stream = GristmillStream(data["store"], seq_len=args.seq_len, micro_batch_rows=args.rows,
                             num_epochs=1)
    loader = DataLoader(stream, batch_size=None, num_workers=args.workers,
                        collate_fn=None if args.default_collate else no_collate)
    real = batches = 0
    with bench.Meter() as meter:
        for batch in loader:
            real += batch["num_tokens"]
            batches += 1
    return {"tokens": real, "batches": batches, **meter.report()}


def _hf_collate(seq_len: int, pad_id: int):
    import torch

    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(examples)
        ids = torch.full((n, seq_len), pad_id, dtype=torch.int64)
        pos = torch.zeros((n, seq_len), dtype=torch.int64)
        real = 0
        for r, ex in enumerate(examples):
            row = torch.as_tensor(ex["input_ids"], dtype=torch.int64)
            ids[r, :row.numel()] = row
            pos[r, :row.numel()] = torch.cat([torch.arange(int(k)) for k in ex["seq_lengths"]])
            real += row.numel()
        labels = ids.clone()
        labels[pos == 0] = -100
        labels[:, :][ids == pad_id] = -100
        return {"input_ids": ids, "labels": labels, "position_ids": pos, "num_tokens": real}

    return collate


def hf_worker(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    from datasets import load_dataset
    from torch.utils.data import DataLoader
    from trl.data_utils import pack_dataset

    files = sorted(str(p) for p in Path(data["parquet"]).glob("*.parquet"))
    real = batches = 0
    with bench.Meter() as meter:
        ds = load_dataset("parquet", data_files=files, split="train", streaming=True)
        packed = pack_dataset(ds, args.seq_len, strategy="bfd_split")
        loader = DataLoader(packed, batch_size=args.rows, num_workers=args.workers,
                            collate_fn=_hf_collate(args.seq_len, data["pad_id"]))
        for batch in loader:
            real += batch["num_tokens"]
            batches += 1
    return {"tokens": real, "batches": batches, **meter.report()}


MOSAIC_CHILD = r'''
import json, sys, time, tempfile, os
import numpy as np
import torch
from streaming import MDSWriter, StreamingDataset
from torch.utils.data import DataLoader
spec = json.loads(sys.argv[1])
store, out, rows, workers = spec["store"], spec["mds"], spec["rows"], spec["workers"]
manifest = json.load(open(os.path.join(store, "manifest.json")))
if not os.path.isdir(out):
    with MDSWriter(out=out, columns={"input_ids": "ndarray:uint32"}, compression=None) as w:
        for rec in manifest["domains"]:
            d = os.path.join(store, rec["path"])
            toks = np.memmap(os.path.join(d, "tokens.bin"), dtype="<u4", mode="r")
            offs = np.load(os.path.join(d, "offsets.npy"))
            for i in range(len(offs) - 1):
                w.write({"input_ids": np.asarray(toks[offs[i]:offs[i + 1]])})
def collate(items):
    n = max(len(x["input_ids"]) for x in items)
    ids = torch.zeros((len(items), n), dtype=torch.int64)
    for r, x in enumerate(items):
        ids[r, :len(x["input_ids"])] = torch.from_numpy(x["input_ids"].astype(np.int64))
    return {"input_ids": ids, "num_tokens": sum(len(x["input_ids"]) for x in items),
            "rows": len(items), "width": n}
started = time.perf_counter()
ds = StreamingDataset(local=out, batch_size=rows, shuffle=True, shuffle_seed=0)
loader = DataLoader(ds, batch_size=rows, num_workers=workers, collate_fn=collate)
real = batches = slots = 0
for b in loader:
    real += b["num_tokens"]; batches += 1; slots += b["rows"] * b["width"]
seconds = time.perf_counter() - started
import resource
print(json.dumps({"tokens": real, "batches": batches, "seconds": seconds, "padded_slots": slots,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def mosaic_run(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    python = args.mosaic_venv / "bin" / "python"
    if not python.is_file():
        return {"skipped": f"no Mosaic venv at {args.mosaic_venv} (create it: python3 -m venv "
                           f"{args.mosaic_venv} && {args.mosaic_venv}/bin/pip install "
                           f"torch==2.14.1 torchvision==0.29.1 mosaicml-streaming)"}
    spec = {"store": data["store"], "mds": str(args.work / f"mds-x{args.repeat}"),
            "rows": args.rows, "workers": args.workers}
    proc = subprocess.run([str(python), "-c", MOSAIC_CHILD, json.dumps(spec)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"skipped": f"Mosaic child failed: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def resume_run(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
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
    t0 = time.perf_counter()
    fresh = make()
    fresh.load_state_dict(state)
    got = next(iter(fresh))
    resume_seconds = time.perf_counter() - t0
    same = bool(torch.equal(got["input_ids"], expected["input_ids"])
                and got["segments"] == expected["segments"])
    return {"steps": args.resume_steps, "epoch_at_resume": state["planner"]["epoch"],
            "run_seconds": run_seconds, "resume_seconds": resume_seconds,
            "state_pickle_bytes": len(pickle.dumps(state)), "torch_save_seconds": save_seconds,
            "identical_next_batch": same}


def worker_main(args: argparse.Namespace) -> None:
    data = json.loads(args.data.read_text())
    fn = {"gristmill": gristmill_worker, "hf-trl": hf_worker, "resume": resume_run}[args.worker]
    payload = fn(args, data)
    args.result.write_text(json.dumps(payload), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Driver


def child_argv(args: argparse.Namespace, name: str) -> list[str]:
    return ["--worker", name, "--data", str(args.data), "--work", str(args.work), "--seq-len",
            str(args.seq_len), "--rows", str(args.rows), "--workers", str(args.workers),
            "--repeat", str(args.repeat), "--resume-steps", str(args.resume_steps),
            *(["--default-collate"] if args.default_collate else [])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=8, help="rows per batch")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--repeat", type=int, default=10, help="tile the demo tokens N times")
    parser.add_argument("--resume-steps", type=int, default=10_000)
    parser.add_argument("--only", default=",".join(CONTENDERS))
    parser.add_argument("--default-collate", action="store_true",
                        help="gristmill without collate_fn=no_collate (torch's default_convert)")
    parser.add_argument("--mosaic-venv", type=Path, default=DEFAULT_MOSAIC)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        worker_main(args)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    data = prepare(args)
    args.data = args.work / "stream-data.json"
    args.data.write_text(json.dumps(data))
    mach = bench.machine()
    print(f"machine: {mach['cpus']} CPUs, {mach['cpu_model']}, {mach['memory_gib']} GiB")
    print(f"data: {data['documents']:,} documents, {data['tokens']:,} tokens (demo corpus x "
          f"{args.repeat}, mean {data['mean_len']:.0f} tokens, max {data['max_len']}); batches "
          f"{args.rows} x {args.seq_len}, DataLoader workers {args.workers}", flush=True)
    results: dict[str, Any] = {}
    result_file = args.work / "stream-result.json"
    for name in [n for n in args.only.split(",") if n]:
        if name == "mosaic":
            results[name] = mosaic_run(args, data)
        else:
            results[name] = bench.run_child(SCRIPT, child_argv(args, name), result_file, name)
        res = results[name]
        if "skipped" in res:
            print(f"{name:>10}: skipped: {res['skipped']}", flush=True)
            continue
        res["tokens_per_s"] = res["tokens"] / res["seconds"]
        slots = res.get("padded_slots") or res["batches"] * args.rows * args.seq_len
        res["efficiency"] = res["tokens"] / slots
        print(f"{name:>10}: {res['tokens']:,} tokens in {res['batches']:,} batches, "
              f"{res['seconds']:.2f} s, {res['tokens_per_s'] / 1e6:.2f} M tokens/s, efficiency "
              f"{100 * res['efficiency']:.2f}%, peak RSS {res['peak_rss_mib']:.0f} MiB",
              flush=True)
    if args.resume_steps:
        res = bench.run_child(SCRIPT, child_argv(args, "resume"), result_file, "resume")
        results["resume"] = res
        print(f"    resume: {res['steps']:,} steps streamed in {res['run_seconds']:.1f} s "
              f"(epoch {res['epoch_at_resume']}); fresh stream + load_state_dict + first batch "
              f"{1000 * res['resume_seconds']:.0f} ms; state {res['state_pickle_bytes']:,} bytes "
              f"pickled, torch.save {1000 * res['torch_save_seconds']:.1f} ms; next batch "
              f"identical: {res['identical_next_batch']}", flush=True)
    goals = {}
    g = results.get("gristmill", {})
    for peer, want in (("hf-trl", 2.0), ("mosaic", 1.0)):
        p = results.get(peer, {})
        if "tokens_per_s" in g and "tokens_per_s" in p:
            ratio = g["tokens_per_s"] / p["tokens_per_s"]
            goals[peer] = {"ratio": ratio, "goal": want, "met": ratio >= want}
            print(f"goal: gristmill >= {want:g}x {peer}: {ratio:.2f}x "
                  f"{'MET' if ratio >= want else 'NOT MET'}")
        else:
            print(f"goal: gristmill >= {want:g}x {peer}: not measured")
    if "resume" in results:
        r = results["resume"]["resume_seconds"]
        goals["resume"] = {"seconds": r, "goal": 1.0, "met": r < 1.0}
        print(f"goal: resume at step {args.resume_steps:,} < 1 s: {r:.3f} s "
              f"{'MET' if r < 1.0 else 'NOT MET'}")
    bench.write_report(args.json, {"machine": mach, "data": data, "results": results,
                                   "goals": goals})


if __name__ == "__main__":
    main()
