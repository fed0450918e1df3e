"""Clustering benchmark: gristmill's k-means vs raw FAISS and scikit-learn, same data, same k.

What it compares (same N x D float32 unit rows, same k, the same number of iterations, the
same seed; each contender in its own fresh ``python`` subprocess):

* ``gristmill``: ``cluster_embeddings(EMB, OUT, k=K, spherical=False, niter=NITER,
  seed=SEED, sample_per_centroid=256, device=DEVICE)`` - end to end: opens the embedding
  store (float16 shards, memory-mapped), scans it for NaN rows, draws a seeded training sample
  of at most 256 rows per centroid, trains FAISS k-means on it, assigns every row in chunks,
  writes the cluster store (zstd Parquet ``cluster``/``dist`` shards, centroids, manifest,
  ``cluster_sizes.png``). This is the like-for-like (L2) row.
* ``gristmill-spherical``: the same with ``spherical=True`` (the engine's default: unit
  centroids, assignment by inner product).
* ``faiss``: ``faiss.Kmeans(D, K, niter=NITER, seed=SEED, max_points_per_centroid=256,
  gpu=GPU)`` trained on the whole in-memory float32 matrix (FAISS subsamples it to 256 rows
  per centroid itself), then ``kmeans.index.search(x, 1)`` to assign every row.
* ``sklearn-kmeans``: ``KMeans(n_clusters=K, init="k-means++", n_init=1, max_iter=NITER,
  tol=0, algorithm="lloyd", random_state=SEED).fit(x)`` on every row (Lloyd on the full data;
  ``tol=0`` so it runs all NITER iterations unless the labels stop changing; its k-means++
  initialisation is part of the fit, FAISS initialises at random).
* ``sklearn-minibatch``: ``MiniBatchKMeans(n_clusters=K, max_iter=NITER, batch_size=4096,
  n_init=1, random_state=SEED).fit(x)`` (``max_iter`` counts epochs over the data; its own
  early stopping, ``max_no_improvement=10``, stays on).

Timing: each subprocess loads its input first (not timed: raw FAISS and scikit-learn get the
float32 matrix in RAM; gristmill gets the path of its store), then times exactly one call that
trains and assigns every row. It reports wall seconds, CPU seconds, "other CPU s" (busy CPU
time of every other process on the machine during the call, from ``/proc/stat``; it should be
near 0 and a warning is printed when it is not), peak RSS (``ru_maxrss`` and ``VmHWM``, imports
and the loaded input included), a sampled peak of anonymous RSS (``RssAnon`` every 20 ms; leaves
out file-backed pages of memory maps) and its RSS just before the call. This process stays
small (data generation and scoring run in subprocesses) because Linux carries a parent's peak
RSS over into a child's ``ru_maxrss``.

Quality is scored the same way for every contender, by one more subprocess, from the
centroids each returned: ``mean inertia`` = mean over ALL rows of the squared L2 distance of
the (unit) row to its nearest centroid (``faiss.IndexFlatL2``, float64 sum), and ``cos
inertia`` = mean of 1 - the largest cosine to an L2-normalised centroid. Spherical k-means
returns unit centroids, so its L2 inertia is not like for like (the L2-optimal centroid of unit
rows is shorter than 1); compare it by ``cos inertia``.

Data (cached as ``WORK/vectors-*.npy``, float32, memory-mapped by every contender, plus the
same rows as a gristmill embedding store of float16 shards of ``--shard-rows`` rows in
``WORK/vectors-*-emb/``; both are reused when present):

* default, synthetic with a real-like spectrum: ``--centres`` (2,000) unit centres with a
  shared mean direction, drawn with lognormal weights (uneven cluster sizes); each row is its
  centre plus anisotropic noise whose per-dimension variance decays like ``k^-0.8`` along a
  random rotation (per-centre noise scale, lognormal around 1, so a row's cosine to its centre
  is about 0.7); rows are L2-normalised. ``--dup-fraction`` (default 0.2) of the rows are then
  replaced by near-copies of another row of the same 65,536-row chunk (relative jitter uniform
  in [0.02, 0.45], cosine to the source about 0.91-1.0), as web corpora hold near-duplicates.
  Generated in chunks with ``numpy.random.default_rng([SEED, chunk])``.
* ``--real EMB``: a real gristmill embedding store (``EmbeddingStore.open(EMB).to_numpy()``,
  finite rows only, L2-normalised), tiled up to ``--rows``; every copy after the first gets
  Gaussian jitter of relative norm ``--jitter`` (default 0.5, cosine to the original about 0.9)
  and is renormalised.

Usage (from the repository root)::

    python benchmarks/cluster.py --json benchmarks/_work/cluster.json
    python benchmarks/cluster.py --rows 200000 --only gristmill,faiss --repeats 3
    python benchmarks/cluster.py --skip-sklearn-full --k 1024

Goals printed at the end (gristmill L2 row): >= 4x faster than ``sklearn-kmeans`` at a mean
inertia no more than 0.5% higher; faster than ``sklearn-minibatch`` at a lower inertia; no
more than 1.2x the time of raw ``faiss``.

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
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# gristmill-all trains on every row (--sample-per-centroid above n / k), the like-for-like
# row against sklearn KMeans, which always uses every row.
CONTENDERS = ("gristmill", "gristmill-spherical", "gristmill-all", "faiss", "sklearn-kmeans",
              "sklearn-minibatch")
MIB = 1 << 20
GEN_CHUNK = 65_536
SPECTRUM_EXPONENT = 0.8  # per-dimension noise variance ~ k^-0.8 (k = 1 .. dim)
MINIBATCH_ROWS = 4096
SAMPLE_PER_CENTROID = 256
GOAL_SKLEARN_SPEEDUP, GOAL_INERTIA_SLACK, GOAL_FAISS_RATIO = 4.0, 0.005, 1.2


# ---------------------------------------------------------------------------------------------
# Data: the cached matrix and the embedding store (shared with benchmarks/select.py)


def add_data_arguments(parser: argparse.ArgumentParser, rows: int = 1_000_000) -> None:
    """The data options both clustering and selection benchmarks take."""
    parser.add_argument("--rows", type=int, default=rows, help=f"rows (default {rows:,})")
    parser.add_argument("--dim", type=int, default=384, help="dimension (default 384)")
    parser.add_argument("--seed", type=int, default=0, help="seeds data and contenders")
    parser.add_argument("--centres", type=int, default=2000,
                        help="generator centres of the synthetic data (default 2000)")
    parser.add_argument("--dup-fraction", type=float, default=0.2,
                        help="share of synthetic rows that are near-copies (default 0.2)")
    parser.add_argument("--real", type=Path, metavar="EMB",
                        help="tile this gristmill embedding store instead of synthetic data")
    parser.add_argument("--jitter", type=float, default=0.5,
                        help="relative noise norm on tiled copies of --real rows (default 0.5)")
    parser.add_argument("--shard-rows", type=int, default=250_000,
                        help="rows per float16 shard of the embedding store (default 250,000)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work",
                        help="folder for the data, scratch outputs and results")


def check_data_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.rows < 2 or args.dim < 2 or args.centres < 1 or args.shard_rows < 1:
        parser.error("--rows and --dim must be >= 2, --centres and --shard-rows >= 1")
    if not 0.0 <= args.dup_fraction < 1.0:
        parser.error(f"--dup-fraction must be in [0, 1), got {args.dup_fraction}")
    if args.jitter < 0:
        parser.error(f"--jitter must be >= 0, got {args.jitter}")


def data_stem(args: argparse.Namespace) -> str:
    if args.real is None:
        return (f"vectors-syn-{args.rows}x{args.dim}-c{args.centres}-dup{args.dup_fraction:g}"
                f"-s{args.seed}")
    from hashlib import sha256

    manifest = (Path(args.real) / "manifest.json").read_bytes()
    tag = sha256(str(Path(args.real).resolve()).encode() + manifest).hexdigest()[:10]
    return f"vectors-real-{tag}-{args.rows}x{args.dim}-j{args.jitter:g}-s{args.seed}"


def prepare_data(args: argparse.Namespace, script: Path) -> dict[str, Any]:
    """Write (or reuse) the matrix and its embedding store in a subprocess; return their info.

    The subprocess also reports the versions and GPU count, so this process never imports
    FAISS or NumPy and stays small.
    """
    args.work.mkdir(parents=True, exist_ok=True)
    result = args.work / f"{data_stem(args)}.prepare.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(script), "--worker", "prepare", "--result", str(result),
           *data_argv(args)]
    if subprocess.run(cmd, check=False).returncode != 0 or not result.is_file():
        raise SystemExit("could not prepare the data")
    info = json.loads(result.read_text(encoding="utf-8"))
    result.unlink()
    return info


def data_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--rows", str(args.rows), "--dim", str(args.dim), "--seed", str(args.seed),
            "--centres", str(args.centres), "--dup-fraction", repr(args.dup_fraction),
            "--jitter", repr(args.jitter), "--shard-rows", str(args.shard_rows),
            "--work", str(args.work)]
    return argv + (["--real", str(args.real)] if args.real is not None else [])


def prepare_worker(args: argparse.Namespace, result: Path) -> None:
    """Subprocess: the matrix, the store, data statistics, versions and machine."""
    started = time.perf_counter()
    npy = args.work / f"{data_stem(args)}.npy"
    reused = npy.is_file()
    if not reused:
        _write_matrix(args, npy)
    emb, emb_reused = _write_store(npy, args.work / f"{data_stem(args)}-emb", args.shard_rows)
    info = {"path": str(npy), "embeddings": str(emb), "reused": reused and emb_reused,
            "rows": args.rows, "dim": args.dim, "seconds": time.perf_counter() - started,
            "source": _describe_source(args), **_data_stats(npy, args.seed)}
    payload = {"data": info, "versions": versions(), "gpus": _faiss_gpus()}
    result.write_text(json.dumps(payload), encoding="utf-8")


def _describe_source(args: argparse.Namespace) -> str:
    if args.real is not None:
        return (f"real embeddings {args.real} tiled to {args.rows:,} rows, jitter "
                f"{args.jitter:g}, seed {args.seed}")
    return (f"synthetic: {args.centres:,} centres, noise variance ~ k^-{SPECTRUM_EXPONENT} over "
            f"{args.dim} dims (random rotation), {args.dup_fraction:.0%} near-copies, seed "
            f"{args.seed}")


def _unit(x: Any) -> Any:
    import numpy as np

    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _spectrum_mix(rng: Any, dim: int) -> Any:
    """(dim, dim) float32: z @ mix has per-direction variance ~ k^-0.8, unit expected norm."""
    import numpy as np

    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    std = np.arange(1, dim + 1, dtype=np.float64) ** (-SPECTRUM_EXPONENT / 2)
    std /= np.sqrt((std**2).sum())
    return (std[:, None] * rotation.T).astype(np.float32)


def _write_matrix(args: argparse.Namespace, npy: Path) -> None:
    import numpy as np

    started = time.perf_counter()
    tmp = npy.with_name(npy.name + ".partial")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                    shape=(args.rows, args.dim))
    fill = _real_chunks(args) if args.real is not None else _synthetic_chunks(args)
    for start in range(0, args.rows, GEN_CHUNK):
        stop = min(args.rows, start + GEN_CHUNK)
        out[start:stop] = fill(start, stop)
    out.flush()
    del out
    tmp.replace(npy)
    print(f"wrote {npy} ({args.rows:,} x {args.dim} float32) in "
          f"{time.perf_counter() - started:.0f} s", flush=True)


def _synthetic_chunks(args: argparse.Namespace) -> Any:
    import numpy as np

    rng = np.random.default_rng([args.seed, 0])
    mix = _spectrum_mix(rng, args.dim)
    # A shared mean direction: real embedding sets are anisotropic (random pairs have a
    # positive mean cosine); 0.4 gives about 0.14 between centres.
    offset = 0.4 * _unit(rng.standard_normal((1, args.dim)))
    centres = _unit(offset + rng.standard_normal((args.centres, args.dim)) @ mix)
    centres = centres.astype(np.float32)
    weights = rng.lognormal(0.0, 1.0, args.centres)
    weights /= weights.sum()
    noise_scale = rng.lognormal(0.0, 0.25, args.centres).astype(np.float32)

    def fill(start: int, stop: int) -> Any:
        chunk = np.random.default_rng([args.seed, 1 + start // GEN_CHUNK])
        m = stop - start
        labels = chunk.choice(args.centres, size=m, p=weights)
        noise = chunk.standard_normal((m, args.dim), dtype=np.float32) @ mix
        x = _unit(centres[labels] + noise_scale[labels, None] * noise)
        dups = chunk.choice(m, size=round(args.dup_fraction * m), replace=False)
        if len(dups):
            sources = chunk.integers(0, m, size=len(dups))
            jitter = chunk.uniform(0.02, 0.45, size=(len(dups), 1)).astype(np.float32)
            noise = chunk.standard_normal((len(dups), args.dim), dtype=np.float32) @ mix
            x[dups] = _unit(x[sources] + jitter * noise)
        return x.astype(np.float32)

    return fill


def _real_chunks(args: argparse.Namespace) -> Any:
    import numpy as np

    from gristmill.storage.embeddings import EmbeddingStore

    base = EmbeddingStore.open(args.real).to_numpy()
    base = _unit(base[np.isfinite(base).all(axis=1)]).astype(np.float32)
    if base.shape[1] != args.dim:
        raise SystemExit(f"--real {args.real} has dim {base.shape[1]}; pass --dim "
                         f"{base.shape[1]}")
    if len(base) == 0:
        raise SystemExit(f"--real {args.real}: no finite rows")
    scale = args.jitter / np.sqrt(args.dim)

    def fill(start: int, stop: int) -> Any:
        chunk = np.random.default_rng([args.seed, 1 + start // GEN_CHUNK])
        rows = np.arange(start, stop)
        x = base[rows % len(base)].copy()
        copies = rows >= len(base)
        noise = chunk.standard_normal((int(copies.sum()), args.dim), dtype=np.float32)
        x[copies] = _unit(x[copies] + scale * noise)
        return x

    return fill


def _write_store(npy: Path, out: Path, shard_rows: int) -> tuple[Path, bool]:
    """A valid gristmill embedding store holding the matrix as float16 shards (reused if made
    from this very file)."""
    import numpy as np

    from gristmill.storage.embeddings import EmbeddingStore
    from gristmill.storage.schema import (
        FORMAT_VERSION,
        file_sha256,
        fingerprint,
        gristmill_version,
        now_iso,
        write_json,
    )

    stat = npy.stat()
    source = {"path": str(npy), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
              "shard_rows": shard_rows}
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        if json.loads(manifest_path.read_text(encoding="utf-8")).get("source") == source:
            EmbeddingStore.open(out)
            return out, True
    shutil.rmtree(out, ignore_errors=True)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    matrix = np.load(npy, mmap_mode="r")
    rows, dim = matrix.shape
    shards = []
    for number, start in enumerate(range(0, rows, shard_rows)):
        stop = min(rows, start + shard_rows)
        name = f"part-{number:05d}"
        np.save(tmp / f"{name}.npy", np.asarray(matrix[start:stop], dtype=np.float16))
        size = (tmp / f"{name}.npy").stat().st_size
        shards.append({"path": f"{name}.npy", "corpus_shard": f"{name}.parquet",
                       "rows": stop - start, "embedded": stop - start, "truncated": 0,
                       "tokens": 0, "bytes": size, "sha256": file_sha256(tmp / f"{name}.npy")})
    corpus_fp = fingerprint([json.dumps(source, sort_keys=True)])
    write_json(tmp / "manifest.json", {
        "kind": "embeddings", "format_version": FORMAT_VERSION,
        "gristmill_version": gristmill_version(), "created": now_iso(),
        "rows": rows, "embedded": rows, "dim": dim, "dtype": "float16", "model": "synthetic",
        "model_revision": None, "pooling": None, "normalized": True, "max_tokens": None,
        "compute_dtype": "float32", "selection_fingerprint": None, "truncated": 0, "tokens": 0,
        "corpus_fingerprint": corpus_fp,
        "corpus": {"path": str(npy), "fingerprint": corpus_fp, "rows": rows},
        "selection": None, "settings_key": corpus_fp,
        "fingerprint": fingerprint([corpus_fp, *(s["sha256"] for s in shards)]),
        "source": source, "shards": shards,
    })
    tmp.rename(out)
    EmbeddingStore.open(out)
    return out, False


def _data_stats(npy: Path, seed: int) -> dict[str, Any]:
    """Cheap checks that the data looks like embeddings: spectrum and cosine statistics."""
    import numpy as np

    x = np.load(npy, mmap_mode="r")
    rng = np.random.default_rng([seed, 10**6])
    sample = np.asarray(x[np.sort(rng.choice(len(x), size=min(len(x), 20_000),
                                             replace=False))], dtype=np.float64)
    variance = np.linalg.svd(sample - sample.mean(axis=0), compute_uv=False) ** 2
    share = variance / variance.sum()
    top = min(200, len(share) - 1)
    slope = np.polyfit(np.log(np.arange(1, top + 1)), np.log(share[:top]), 1)[0]
    a, b = rng.integers(0, len(sample), size=(2, 5000))
    pair_cos = (sample[a] * sample[b]).sum(axis=1)
    return {"variance_top10": float(share[:10].sum()), "variance_top50": float(share[:50].sum()),
            "spectrum_slope": float(slope), "mean_pair_cosine": float(pair_cos.mean())}


# ---------------------------------------------------------------------------------------------
# Measurement helpers (shared with benchmarks/select.py)


def status_kib(field: str) -> int:
    """A memory figure (KiB) from /proc/self/status, e.g. VmHWM or RssAnon; 0 if absent."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def busy_cpu_seconds() -> float:
    """CPU seconds all processes on this machine have spent busy since boot (/proc/stat)."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()  # cpu user nice system idle iowait irq softirq steal
    except OSError:
        return float("nan")
    busy = sum(int(fields[i]) for i in (1, 2, 3, 6, 7, 8))
    return busy / os.sysconf("SC_CLK_TCK")


class AnonPeak(threading.Thread):
    """Samples RssAnon every 20 ms; ru_maxrss also counts mapped file pages."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = status_kib("RssAnon")
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, status_kib("RssAnon"))

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, status_kib("RssAnon"))


class Meter:
    """Times one call: wall and CPU seconds, other processes' CPU, memory figures."""

    def __enter__(self) -> Meter:
        self.rss_before = status_kib("VmRSS")
        self.sampler = AnonPeak()
        self.sampler.start()
        self.cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        self.busy0 = busy_cpu_seconds()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu_seconds = ((cpu1.ru_utime + cpu1.ru_stime)
                            - (self.cpu0.ru_utime + self.cpu0.ru_stime))
        self.other = max(0.0, busy_cpu_seconds() - self.busy0 - self.cpu_seconds)
        self.anon_peak = self.sampler.stop()

    def report(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "cpu_seconds": self.cpu_seconds,
                "other_cpu_seconds": self.other,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "vm_hwm_mib": status_kib("VmHWM") / 1024,
                "peak_anon_rss_mib": self.anon_peak / 1024,
                "rss_before_call_mib": self.rss_before / 1024}


def check_run(name: str, payload: dict[str, Any]) -> None:
    """Warn when a child's timing or memory figure cannot be trusted."""
    if payload["peak_rss_mib"] > payload["vm_hwm_mib"] + 16:
        print(f"warning: {name} ru_maxrss {payload['peak_rss_mib']:.0f} MiB exceeds its VmHWM "
              f"{payload['vm_hwm_mib']:.0f} MiB: the parent's peak leaked into the child")
    if payload["other_cpu_seconds"] > 0.05 * payload["seconds"] * (os.cpu_count() or 1):
        print(f"warning: other processes used {payload['other_cpu_seconds']:.1f} CPU s during "
              f"the {payload['seconds']:.1f} s {name} call: it was slowed")


def run_child(script: Path, argv: list[str], result: Path, what: str) -> dict[str, Any]:
    """Run `script --worker ...` in a fresh interpreter and return its JSON result."""
    result.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, str(script), *argv, "--result", str(result)],
                          check=False)
    if proc.returncode != 0 or not result.is_file():
        raise SystemExit(f"{what} failed (exit status {proc.returncode})")
    payload = json.loads(result.read_text(encoding="utf-8"))
    result.unlink()
    return payload


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("gristmill", "numpy", "faiss-cpu", "faiss-gpu", "faiss-gpu-cu12",
                 "scikit-learn", "torch", "threadpoolctl"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    try:
        import faiss

        found["faiss"] = getattr(faiss, "__version__", "unknown")
    except ImportError:
        found["faiss"] = "not installed"
    return found


def _faiss_gpus() -> int:
    try:
        import faiss
    except ImportError:
        return 0
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine() -> dict[str, Any]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpus": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None,
            "cpu_model": _cpu_model(), "memory_gib": round(mem / (1 << 30), 1),
            "platform": platform.platform(), "load_avg_at_start": os.getloadavg()}


def print_setup(info: dict[str, Any], mach: dict[str, Any]) -> None:
    """The machine, the versions and the data, before any run."""
    data, ver = info["data"], info["versions"]
    print(f"machine: {mach['cpus']} CPUs ({mach['cpus_usable']} usable), {mach['cpu_model']}, "
          f"{mach['memory_gib']} GiB, faiss GPUs: {info['gpus']}, load average at start "
          f"{mach['load_avg_at_start'][0]:.2f}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()))
    print(f"data: {data['rows']:,} x {data['dim']} float32 unit rows, {data['source']} "
          f"({'reused' if data['reused'] else 'written'}: {data['path']}); variance in the "
          f"top 10 / 50 principal components {data['variance_top10']:.1%} / "
          f"{data['variance_top50']:.1%}, spectrum log-log slope "
          f"{data['spectrum_slope']:.2f}, mean cosine of random pairs "
          f"{data['mean_pair_cosine']:.3f}", flush=True)


def write_report(path: Path | None, report: dict[str, Any]) -> None:
    if path is None:
        return
    report = {"date": datetime.now(UTC).replace(microsecond=0).isoformat(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), **report}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------
# Child processes: one contender, one run; and the shared scoring


def _use_gpu(device: str) -> bool:
    return device != "cpu" and _faiss_gpus() > 0


def _contender(name: str, args: argparse.Namespace, scratch: Path) -> tuple[Any, Any]:
    """(loaded input, run) for one contender; run(input) -> (centroids, info)."""
    import numpy as np

    k, niter, seed = args.k, args.niter, args.seed
    if name.startswith("gristmill"):
        from gristmill.selectors.clustering import cluster_embeddings

        per_centroid = -(-args.rows // k) + 1 if name == "gristmill-all" else SAMPLE_PER_CENTROID

        def run_gristmill(emb: str) -> tuple[Any, dict[str, Any]]:
            result = cluster_embeddings(emb, scratch / "clusters", k=k,
                                        spherical=name == "gristmill-spherical", niter=niter,
                                        seed=seed, sample_per_centroid=per_centroid,
                                        device=args.device, overwrite=True)
            m = result.store.manifest
            return result.store.centroids(), {
                "train_rows": m["train_sample_rows"], "iterations": m["niter"],
                "device": m["device"], "engine_mean_inertia": m["mean_inertia"]}

        return args.emb, run_gristmill
    x = np.load(args.data)  # in RAM before timing, as a user of these libraries holds it
    if name == "faiss":
        import faiss

        gpu = _use_gpu(args.device)

        def run_faiss(x: Any) -> tuple[Any, dict[str, Any]]:
            kmeans = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, gpu=gpu,
                                  max_points_per_centroid=SAMPLE_PER_CENTROID, verbose=False)
            kmeans.train(x)
            kmeans.index.search(x, 1)  # assign every row, as the others do
            return kmeans.centroids, {"train_rows": min(len(x), k * SAMPLE_PER_CENTROID),
                                      "iterations": niter, "device": "gpu" if gpu else "cpu"}

        return x, run_faiss
    from sklearn.cluster import KMeans, MiniBatchKMeans

    def run_sklearn(x: Any) -> tuple[Any, dict[str, Any]]:
        if name == "sklearn-kmeans":
            model = KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=niter, tol=0.0,
                           algorithm="lloyd", random_state=seed).fit(x)
            extra = {}
        else:
            model = MiniBatchKMeans(n_clusters=k, max_iter=niter, batch_size=MINIBATCH_ROWS,
                                    n_init=1, random_state=seed).fit(x)
            extra = {"steps": int(model.n_steps_)}
        return model.cluster_centers_, {"train_rows": len(x), "iterations": int(model.n_iter_),
                                        "device": "cpu",
                                        "engine_mean_inertia": float(model.inertia_) / len(x),
                                        **extra}

    return x, run_sklearn


def cluster_worker(name: str, args: argparse.Namespace, result: Path) -> None:
    import numpy as np

    scratch = Path(tempfile.mkdtemp(prefix=f"cluster-{name}-", dir=args.work))
    try:
        loaded, run = _contender(name, args, scratch)
        with Meter() as meter:
            centroids, info = run(loaded)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out = args.work / f"cluster-{name}.centroids.npy"
    np.save(out, np.ascontiguousarray(centroids, dtype=np.float32))
    payload = {"contender": name, "rows": args.rows, "k": args.k, "niter": args.niter,
               "centroids": str(out), **meter.report(), **info}
    result.write_text(json.dumps(payload), encoding="utf-8")


def score_worker(data: Path, centroid_files: list[str], device: str, result: Path) -> None:
    """Mean L2 inertia and mean cosine distance over all rows, identically for every file."""
    import faiss
    import numpy as np

    x = np.load(data, mmap_mode="r")
    scores = {}
    for path in centroid_files:
        centroids = np.ascontiguousarray(np.load(path), dtype=np.float32)
        l2, ip = faiss.IndexFlatL2(x.shape[1]), faiss.IndexFlatIP(x.shape[1])
        l2.add(centroids)
        ip.add(np.ascontiguousarray(_unit(centroids), dtype=np.float32))
        if _use_gpu(device):
            l2, ip = faiss.index_cpu_to_all_gpus(l2), faiss.index_cpu_to_all_gpus(ip)
        sq, cos = 0.0, 0.0
        for start in range(0, len(x), GEN_CHUNK):
            chunk = np.ascontiguousarray(x[start:start + GEN_CHUNK], dtype=np.float32)
            sq += float(l2.search(chunk, 1)[0].astype(np.float64).sum())
            cos += float((1.0 - ip.search(chunk, 1)[0].astype(np.float64)).sum())
        scores[path] = {"mean_inertia": sq / len(x), "cos_inertia": cos / len(x)}
    result.write_text(json.dumps(scores), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Parent


def run_contender(name: str, args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    argv = ["--worker", name, "--data", data["path"], "--emb", data["embeddings"],
            "--k", str(args.k), "--niter", str(args.niter), "--device", args.device,
            *data_argv(args)]
    load = os.getloadavg()[0]
    payload = run_child(Path(__file__).resolve(), argv, args.work / f"cluster-{name}.json",
                        f"{name} run")
    payload.update(rows_per_s=payload["rows"] / payload["seconds"], load_avg_1min_before=load)
    check_run(name, payload)
    return payload


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["runs"] = [r["seconds"] for r in runs]
    return best


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def goals(best: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The three goals for the gristmill L2 row: {name: {value, met}}, and a one-line verdict."""
    g = best.get("gristmill")
    out: dict[str, Any] = {}
    if g is None:
        return out, "goals: n/a (gristmill was not run)"
    if "sklearn-kmeans" in best:
        s = best["sklearn-kmeans"]
        # Either gristmill row may meet it: the default sample, or training on every row.
        for row in ("gristmill", "gristmill-all"):
            if row not in best:
                continue
            speedup = _ratio(s["seconds"], best[row]["seconds"])
            excess = _ratio(best[row]["mean_inertia"], s["mean_inertia"]) - 1
            out[f"sklearn-kmeans ({row})"] = {
                "speedup": speedup, "inertia_excess": excess,
                "met": speedup >= GOAL_SKLEARN_SPEEDUP and excess <= GOAL_INERTIA_SLACK,
                "text": f">= {GOAL_SKLEARN_SPEEDUP:g}x sklearn KMeans at <= "
                        f"+{GOAL_INERTIA_SLACK:.1%} inertia, {row} ({speedup:.1f}x, "
                        f"{excess:+.2%})"}
    if "sklearn-minibatch" in best:
        m = best["sklearn-minibatch"]
        speedup = _ratio(m["seconds"], g["seconds"])
        excess = _ratio(g["mean_inertia"], m["mean_inertia"]) - 1
        out["sklearn-minibatch"] = {"speedup": speedup, "inertia_excess": excess,
                                    "met": speedup > 1 and excess < 0,
                                    "text": f"faster than MiniBatchKMeans at lower inertia "
                                            f"({speedup:.2f}x, {excess:+.2%})"}
    if "faiss" in best:
        ratio = _ratio(g["seconds"], best["faiss"]["seconds"])
        out["faiss"] = {"time_ratio": ratio, "met": ratio <= GOAL_FAISS_RATIO,
                        "text": f"<= {GOAL_FAISS_RATIO:g}x raw faiss time ({ratio:.2f}x)"}
    if not out:
        return out, "goals: n/a (no peer was run)"
    met = sum(v["met"] for v in out.values())
    parts = "; ".join(f"{v['text']}: {'MET' if v['met'] else 'NOT MET'}" for v in out.values())
    return out, f"goals {met}/{len(out)} met: {parts}"


def _print_table(results: list[dict[str, Any]], title: str) -> Any:
    from rich.console import Console
    from rich.table import Table

    base = next((r for r in results if r["contender"] == "gristmill"), results[0])
    table = Table(title=title)
    for name in ("contender", "device", "seconds", "k rows/s", "CPU s", "other CPU s",
                 "peak RSS MiB", "peak anon MiB", "iters", "train rows", "mean inertia",
                 "cos inertia", "time ratio", "inertia ratio"):
        left = name in ("contender", "device")
        table.add_column(name, justify="left" if left else "right", no_wrap=left)
    for r in results:
        table.add_row(r["contender"], r["device"], f"{r['seconds']:.1f}",
                      f"{r['rows_per_s'] / 1000:.1f}", f"{r['cpu_seconds']:.1f}",
                      f"{r['other_cpu_seconds']:.1f}", f"{r['peak_rss_mib']:.0f}",
                      f"{r['peak_anon_rss_mib']:.0f}", str(r["iterations"]),
                      f"{r['train_rows']:,}", f"{r['mean_inertia']:.5f}",
                      f"{r['cos_inertia']:.5f}", f"{_ratio(r['seconds'], base['seconds']):.2f}",
                      f"{_ratio(r['mean_inertia'], base['mean_inertia']):.4f}")
    console = Console(width=max(Console().width, 180))
    console.print(table)
    console.print(f"ratios are to {base['contender']}; mean inertia: squared L2 to the nearest "
                  "centroid, cos inertia: 1 - cosine to the nearest unit centroid, both over "
                  "all rows")
    return console


def _contenders(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    names = [n.strip() for n in args.only.split(",")] if args.only else list(CONTENDERS)
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        parser.error(f"--only: unknown contender(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(CONTENDERS)}")
    if args.skip_sklearn_full:
        names = [n for n in names if n != "sklearn-kmeans"]
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_arguments(parser)
    parser.add_argument("--k", type=int, default=256, help="centroids (default 256)")
    parser.add_argument("--niter", type=int, default=20, help="k-means iterations (default 20)")
    parser.add_argument("--device", default="auto",
                        help="auto (GPU when faiss has one), cpu or cuda[:N] for gristmill "
                             "and raw faiss; scikit-learn is CPU only")
    parser.add_argument("--only", help=f"comma-separated contenders ({', '.join(CONTENDERS)})")
    parser.add_argument("--skip-sklearn-full", action="store_true",
                        help="leave out sklearn-kmeans (the slowest) for a quick run")
    parser.add_argument("--repeats", type=int, default=1, help="runs per contender; best kept")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    for hidden in ("--worker", "--data", "--emb", "--result", "--centroid-files"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    if args.worker == "prepare":
        prepare_worker(args, Path(args.result))
        return
    if args.worker == "score":
        score_worker(Path(args.data), args.centroid_files.split(","), args.device,
                     Path(args.result))
        return
    if args.worker:
        cluster_worker(args.worker, args, Path(args.result))
        return
    check_data_arguments(parser, args)
    if args.k < 1 or args.k > args.rows or args.niter < 1 or args.repeats < 1:
        parser.error("--k must be in [1, --rows]; --niter and --repeats must be >= 1")
    contenders = _contenders(parser, args)
    if not contenders:
        parser.error("no contender left to run")

    mach = machine()
    info = prepare_data(args, Path(__file__).resolve())
    print_setup(info, mach)
    print(f"k={args.k}, niter={args.niter}, seed={args.seed}, device {args.device}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    for repeat in range(args.repeats):
        # Alternate the order so no contender always runs first.
        for name in contenders if repeat % 2 == 0 else contenders[::-1]:
            run = run_contender(name, args, info["data"])
            print(f"run {repeat + 1}/{args.repeats} {name}: {run['seconds']:.1f} s, "
                  f"{run['rows_per_s'] / 1000:.1f}k rows/s, peak RSS "
                  f"{run['peak_rss_mib']:.0f} MiB, other processes "
                  f"{run['other_cpu_seconds']:.1f} CPU s (load average before: "
                  f"{run['load_avg_1min_before']:.2f})", flush=True)
            runs[name].append(run)

    results = [_best(runs[c]) for c in contenders]
    scored = run_child(Path(__file__).resolve(),
                       ["--worker", "score", "--data", info["data"]["path"], "--device",
                        args.device, "--centroid-files", ",".join(r["centroids"] for r in results)],
                       args.work / "cluster-score.json", "scoring")
    for r in results:
        r.update(scored[r["centroids"]])
    title = (f"cluster: {args.rows:,} x {args.dim}, k={args.k}, {args.niter} iterations "
             f"(fastest of {args.repeats} run{'s' if args.repeats > 1 else ''})")
    console = _print_table(results, title)
    verdict, line = goals({r["contender"]: r for r in results})
    console.print(line)
    write_report(args.json, {"benchmark": "cluster", "machine": mach, **info,
                             "settings": {"k": args.k, "niter": args.niter, "seed": args.seed,
                                          "device": args.device},
                             "results": results, "goals": verdict, "verdict": line})


if __name__ == "__main__":
    main()
