"""Ingest benchmark: gristmill vs Hugging Face `datasets` on a >= 1 GB JSONL file.

What it compares (same input file, same machine, each contender in its own fresh process):

* ``gristmill``: ``gristmill.ingest([jsonl], out, domain_field="domain")`` - streams the JSONL
  into a corpus store (zstd Parquet shards, generated ids, manifest with sha256 checksums).
* ``datasets``: what a user would do instead - ``datasets.load_dataset("json",
  data_files=jsonl, split="train", cache_dir=FRESH)`` then ``ds.save_to_disk(DIR)``, with a
  fresh, empty HF cache per run (``HF_HOME`` / ``HF_DATASETS_CACHE`` in a temporary folder,
  ``HF_HUB_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1``) and progress bars off.

Each run happens in a new ``python`` subprocess that times only the ingest call (imports are
excluded) and reports its wall time and ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (peak
RSS of that process, imports included) back to this script, plus a sampled peak of anonymous
RSS (``RssAnon`` in ``/proc/self/status``, every 20 ms), which leaves out file-backed pages of
memory-mapped Arrow files. Linux carries a parent's peak RSS over into a child's
``ru_maxrss``, so this script keeps its own process small (the input is written by a
subprocess too) and cross-checks against the child's ``VmHWM``. Throughput is MB/s of input
JSONL (1 MB = 10^6 bytes); memory is in MiB. Every output is deleted right after it is
measured.

The input is ``WORK/demo-x.jsonl``: the demo corpus (``data/demo/*.parquet``) repeated until
the file reaches ``--size-gb``, each repeated record made distinct by appending ``" [copy N]"``
to its text. Records have the fields ``text``, ``domain`` and ``source``. An existing file of
the right size is reused. Without ``data/demo`` the text comes from the standard library's
``.py`` files, split into ~1,500-character passages.

``--scaling`` also runs gristmill on a smaller file (``--scaling-size-gb``, default 0.25,
``WORK/demo-x-small.jsonl``) to show that its peak RSS does not grow with the input size.

Usage (from the repository root)::

    python benchmarks/ingest.py --size-gb 1 --scaling --json benchmarks/_work/ingest.json
    python benchmarks/ingest.py --only gristmill --repeats 3

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
import shutil
import subprocess
import sysconfig
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "data" / "demo"
CONTENDERS = ("gristmill", "datasets")
GB = 10**9
MB = 10**6
MIB = 1 << 20
PASSAGE_CHARS = 1500


# ---------------------------------------------------------------------------------------------
# Input


def _demo_records() -> tuple[list[tuple[str, str, str]], str]:
    """(text, domain, source) records of the demo corpus, or of stdlib passages without it."""
    files = sorted(DEMO.glob("*.parquet"))
    if files:
        import pyarrow.parquet as pq

        records: list[tuple[str, str, str]] = []
        for path in files:
            table = pq.read_table(path, columns=["text", "domain", "source"])
            records.extend(zip(*(table.column(c).to_pylist() for c in table.column_names),
                               strict=True))
        return records, f"{DEMO.relative_to(ROOT)}/*.parquet ({len(files)} files)"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    records = []
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for start in range(0, len(text), PASSAGE_CHARS):
            records.append((text[start:start + PASSAGE_CHARS], "python_code", path.name))
    return records, f"stdlib .py files under {stdlib} (data/demo missing)"


def _right_size(path: Path, target: int) -> bool:
    """The file was written by `build_input` for this target: it stops at the first record
    past `target` bytes, and no record is anywhere near 1 MiB."""
    return path.is_file() and target <= path.stat().st_size < target + MIB


def build_input(path: Path, size_gb: float) -> dict[str, Any]:
    """Write (or reuse) a JSONL file of at least `size_gb` GB of repeated demo records.

    The writing happens in a subprocess: Linux carries a parent's peak RSS over into the
    `ru_maxrss` of every child it starts, so this process must stay small.
    """
    target = int(size_gb * GB)
    if _right_size(path, target):
        return {"path": str(path), "bytes": path.stat().st_size, "reused": True}
    result = path.with_name(path.name + ".result.json")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "build", "--input",
           str(path), "--size-gb", repr(size_gb), "--result", str(result)]
    if subprocess.run(cmd, check=False).returncode != 0 or not result.is_file():
        raise SystemExit(f"could not write {path}")
    info = json.loads(result.read_text(encoding="utf-8"))
    result.unlink()
    return info


def _write_input(path: Path, size_gb: float, result: Path) -> None:
    target = int(size_gb * GB)
    records, origin = _demo_records()
    # Pre-encode each record once: the text without its closing quote, so a copy is one format.
    parts = [(json.dumps(text, ensure_ascii=False)[:-1],
              json.dumps(domain, ensure_ascii=False), json.dumps(source, ensure_ascii=False))
             for text, domain, source in records]
    tmp = path.with_name(path.name + ".partial")
    written, lines, copy = 0, 0, 0
    started = time.perf_counter()
    with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        while written < target:
            for text, domain, source in parts:
                line = (f'{{"text": {text} [copy {copy}]", "domain": {domain}, '
                        f'"source": {source}}}\n')
                handle.write(line)
                written += len(line.encode("utf-8"))
                lines += 1
                if written >= target:
                    break
            copy += 1
    tmp.replace(path)
    print(f"wrote {path} ({written / GB:.2f} GB, {lines:,} records, {copy} copies of "
          f"{len(records):,} records from {origin}) in {time.perf_counter() - started:.0f} s")
    info = {"path": str(path), "bytes": path.stat().st_size, "reused": False,
            "records": lines, "origin": origin}
    result.write_text(json.dumps(info), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Child process: one contender, one run


def _status_kib(field: str) -> int:
    """A memory figure (KiB) from /proc/self/status, e.g. RssAnon or VmHWM; 0 if absent."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _rss_anon_kib() -> int:
    return _status_kib("RssAnon")


class _AnonPeak(threading.Thread):
    """Samples RssAnon every 20 ms; ru_maxrss also counts mmapped file pages."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _rss_anon_kib()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, _rss_anon_kib())

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, _rss_anon_kib())


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def child(contender: str, source: Path, scratch: Path, result: Path) -> None:
    """Run one contender on `source` with outputs under `scratch`; write a JSON result."""
    out = scratch / "out"
    if contender == "datasets":
        for name, sub in (("HF_HOME", "hf_home"), ("HF_DATASETS_CACHE", "hf_cache")):
            os.environ[name] = str(scratch / sub)
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()

        def run() -> int:
            ds = datasets.load_dataset("json", data_files=str(source), split="train",
                                       cache_dir=str(scratch / "cache_dir"))
            ds.save_to_disk(str(out))
            return ds.num_rows
    else:
        import gristmill

        def run() -> int:
            return gristmill.ingest([source], out, domain_field="domain").num_rows

    rss_after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sampler = _AnonPeak()
    sampler.start()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    rows = run()
    seconds = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    anon_peak = sampler.stop()
    caches = [scratch / d for d in ("cache_dir", "hf_cache", "hf_home") if (scratch / d).exists()]
    payload = {
        "contender": contender,
        "seconds": seconds,
        "rows": rows,
        "cpu_seconds": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "vm_hwm_mib": _status_kib("VmHWM") / 1024,
        "rss_after_import_mib": rss_after_import / 1024,
        "peak_anon_rss_mib": anon_peak / 1024,
        "output_bytes": _dir_bytes(out),
        "cache_bytes": sum(_dir_bytes(c) for c in caches),
    }
    result.write_text(json.dumps(payload), encoding="utf-8")


def run_contender(contender: str, source: Path, work: Path) -> dict[str, Any]:
    """One measured run in a fresh interpreter; deletes its outputs afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix=f"{contender}-", dir=work))
    result = scratch / "result.json"
    try:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", contender,
               "--input", str(source), "--scratch", str(scratch), "--result", str(result)]
        load = os.getloadavg()[0]
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0 or not result.is_file():
            raise SystemExit(f"{contender} run failed (exit status {proc.returncode})")
        payload = json.loads(result.read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    size = source.stat().st_size
    payload.update(input=str(source), input_bytes=size,
                   mb_per_s=size / MB / payload["seconds"], load_avg_1min_before=load)
    if payload["peak_rss_mib"] > payload["vm_hwm_mib"] + 16:
        print(f"warning: {contender} ru_maxrss {payload['peak_rss_mib']:.0f} MiB exceeds its "
              f"VmHWM {payload['vm_hwm_mib']:.0f} MiB: the parent's peak leaked into the child")
    return payload


# ---------------------------------------------------------------------------------------------
# Parent


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("gristmill", "pyarrow", "polars", "datasets", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _machine() -> dict[str, Any]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpus": os.cpu_count(), "memory_gib": round(mem / (1 << 30), 1),
            "platform": platform.platform(), "processor": platform.processor() or None}


def _check_disk(work: Path, size_gb: float, contenders: list[str]) -> None:
    free = shutil.disk_usage(work).free
    # Input (if not yet written) + the largest output: datasets keeps an Arrow cache and a
    # save_to_disk copy, each about the size of the input.
    need = int(size_gb * GB) * (1 + (2.5 if "datasets" in contenders else 0.6))
    print(f"free disk at {work}: {free / GB:.1f} GB (need about {need / GB:.1f} GB)")
    if free < need:
        raise SystemExit(f"not enough free disk at {work}: {free / GB:.1f} GB free, "
                         f"about {need / GB:.1f} GB needed; pass --work DIR elsewhere")


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["runs"] = runs
    return best


def _print_table(results: list[dict[str, Any]], ratios: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ingest: JSONL -> store (fastest of --repeats runs)")
    for name in ("contender", "input GB", "rows", "seconds", "CPU s", "MB/s", "peak RSS MiB",
                 "peak anon RSS MiB", "output MiB", "HF cache MiB"):
        table.add_column(name, justify="left" if name == "contender" else "right")
    for r in results:
        table.add_row(r["contender"], f"{r['input_bytes'] / GB:.2f}", f"{r['rows']:,}",
                      f"{r['seconds']:.1f}", f"{r['cpu_seconds']:.1f}", f"{r['mb_per_s']:.1f}",
                      f"{r['peak_rss_mib']:.0f}",
                      f"{r['peak_anon_rss_mib']:.0f}", f"{r['output_bytes'] / MIB:.0f}",
                      f"{r['cache_bytes'] / MIB:.0f}" if r["cache_bytes"] else "-")
    console = Console(width=max(Console().width, 140))
    console.print(table)
    for name, value in ratios.items():
        console.print(f"{name}: {value:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="input size (default 1.0)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work",
                        help="folder for the input and scratch outputs")
    parser.add_argument("--repeats", type=int, default=1, help="runs per contender; best kept")
    parser.add_argument("--only", choices=CONTENDERS, help="run one contender only")
    parser.add_argument("--scaling", action="store_true",
                        help="also run gristmill on a smaller input to show bounded memory")
    parser.add_argument("--scaling-size-gb", type=float, default=0.25,
                        help="size of the smaller input for --scaling (default 0.25)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    for hidden in ("--child", "--input", "--scratch", "--result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "build":
        _write_input(Path(args.input), args.size_gb, Path(args.result))
        return
    if args.child:
        child(args.child, Path(args.input), Path(args.scratch), Path(args.result))
        return
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    contenders = [args.only] if args.only else list(CONTENDERS)
    args.work.mkdir(parents=True, exist_ok=True)
    _check_disk(args.work, args.size_gb, contenders)
    inputs = {"main": build_input(args.work / "demo-x.jsonl", args.size_gb)}
    if args.scaling:
        inputs["small"] = build_input(args.work / "demo-x-small.jsonl", args.scaling_size_gb)

    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    small_runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        # Alternate the order so neither contender always runs first.
        order = contenders if repeat % 2 == 0 else contenders[::-1]
        for contender in order:
            run = run_contender(contender, Path(inputs["main"]["path"]), args.work)
            print(f"run {repeat + 1}/{args.repeats} {contender}: {run['seconds']:.1f} s, "
                  f"{run['mb_per_s']:.1f} MB/s, peak RSS {run['peak_rss_mib']:.0f} MiB "
                  f"(load average before: {run['load_avg_1min_before']:.2f})")
            runs[contender].append(run)
        if args.scaling:
            run = run_contender("gristmill", Path(inputs["small"]["path"]), args.work)
            print(f"run {repeat + 1}/{args.repeats} gristmill (small): {run['seconds']:.1f} s, "
                  f"peak RSS {run['peak_rss_mib']:.0f} MiB")
            small_runs.append(run)

    results = [_best(runs[c]) for c in contenders]
    if small_runs:
        small = _best(small_runs)
        small["contender"] = "gristmill (small input)"
        results.append(small)
    best = {r["contender"]: r for r in results}
    ratios: dict[str, float] = {}
    if "gristmill" in best and "datasets" in best:
        g, d = best["gristmill"], best["datasets"]
        ratios["throughput gristmill/datasets (x, higher is better)"] = (
            g["mb_per_s"] / d["mb_per_s"])
        ratios["peak RSS gristmill/datasets (x, lower is better)"] = (
            g["peak_rss_mib"] / d["peak_rss_mib"])
        ratios["peak anon RSS gristmill/datasets (x, lower is better)"] = (
            g["peak_anon_rss_mib"] / d["peak_anon_rss_mib"])
    if small_runs and "gristmill" in best:
        g, s = best["gristmill"], best["gristmill (small input)"]
        ratios[f"gristmill peak RSS {g['input_bytes'] / GB:.2f} GB / "
               f"{s['input_bytes'] / GB:.2f} GB input (x, ~1 means bounded)"] = (
            g["peak_rss_mib"] / s["peak_rss_mib"])
    _print_table(results, ratios)

    if args.json:
        report = {
            "benchmark": "ingest",
            "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": _machine(),
            "versions": _versions(),
            "inputs": inputs,
            "results": results,
            "ratios": ratios,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
