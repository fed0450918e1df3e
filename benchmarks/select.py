"""Selection benchmark: SemDeDup then DBP with gristmill, vs a naive SemDeDup, same clusters.

What it measures (same N x D float32 unit rows and embedding store as
``benchmarks/cluster.py``, built by the same code and cached under the same names in WORK):

* ``gristmill``, one fresh ``python`` subprocess running the pipeline a user would run, each
  step timed on its own:

  1. ``cluster``: ``cluster_embeddings(EMB, WORK/selection-clusters, k=K, spherical=True,
     niter=NITER, seed=SEED, device=DEVICE)`` (K defaults to ``auto``, about sqrt(N/2)), then
     the labels and centroids read back with ``ClusterStore.read_all()`` / ``.centroids()``.
  2. ``pool``: ``Pool.from_arrays(vectors, labels=labels, centroids=centroids)`` over the
     memory-mapped float32 matrix (it computes each row's cosine to its centroid).
  3. ``semdedup``: ``select("semdedup", pool, None, seed=SEED, eps=EPS)`` (a filter, EPS 0.05).
  4. ``dbp pool``: ``Pool.from_arrays`` over the rows SemDeDup kept, their labels and the same
     centroids.
  5. ``dbp``: ``select("dbp", pool2, BUDGET, seed=SEED, tau=TAU)`` (BUDGET 0.5 of the rows
     SemDeDup kept; the DBP paper runs it after SemDeDup).

  "selection" is steps 2-5 (everything after clustering); "end to end" adds step 1.
* ``naive``: SemDeDup as a user would write it from the reference repo
  (facebookresearch/SemDeDup ``semdedup.py``), in one process, on the same clusters (the labels
  and centroids gristmill wrote): for each cluster, ``np.flatnonzero(labels == c)``, sort the
  members farthest from the centroid first (ties by row, as gristmill), then the dense torch
  Gram matrix ``E @ E.T``, ``fill_diagonal_(0)``, ``torch.triu(..., diagonal=1)``, the column
  max, and remove ``j`` iff it exceeds ``1 - EPS``. Clusters whose dense matrix would exceed
  ``--naive-max-gib`` (default 2 GiB) are skipped and counted. It runs on CUDA when torch sees
  a GPU and ``--device`` is not ``cpu``. The input is loaded into RAM before timing. Its removed
  rows are then compared with gristmill's (disagreements over the clusters it did not skip;
  expected 0).

Each subprocess reports wall and CPU seconds, "other CPU s" (busy CPU time of every other
process on the machine during the timed calls; it should be near 0), peak RSS (``ru_maxrss``
and ``VmHWM``, imports included), a sampled peak of anonymous RSS (leaves out the memory-mapped
matrix) and, for gristmill, ``VmHWM`` after every step. This process stays small because Linux
carries a parent's peak RSS over into a child's ``ru_maxrss``.

Data: see ``benchmarks/cluster.py`` (synthetic rows with a k^-0.8 spectrum and 20%
planted near-copies by default, or ``--real EMB`` tiled). Both scripts share the cached files.

Usage (from the repository root)::

    python benchmarks/select.py --json benchmarks/_work/selection.json
    python benchmarks/select.py --rows 200000 --k 512 --skip-naive

Goal printed at the end: SemDeDup + DBP on 1M x 384 in <= 60 s on 2 cores (the selection
steps; the end-to-end time with clustering is printed beside it), and 0 disagreements with
the naive SemDeDup.

This file shares its name with the standard-library ``select`` module, which ``subprocess``
imports: every script here moves its own folder to the end of ``sys.path`` first (the guard
below), so the standard library wins and ``import cluster`` still finds the sibling script.

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
import shutil
import time
from pathlib import Path
from typing import Any

import cluster as bench  # benchmarks/cluster.py: the shared data and measurement code

SCRIPT = Path(__file__).resolve()
GOAL_SECONDS = 60.0
GIB = 1 << 30


# ---------------------------------------------------------------------------------------------
# Child processes


class _Steps:
    """Wall and CPU seconds of named steps, and VmHWM after each."""

    def __init__(self) -> None:
        self.done: dict[str, dict[str, float]] = {}

    def __call__(self, name: str) -> _Steps:
        self.name = name
        return self

    def __enter__(self) -> None:
        self.cpu0 = time.process_time()
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.done[self.name] = {"seconds": time.perf_counter() - self.started,
                                "cpu_seconds": time.process_time() - self.cpu0,
                                "vm_hwm_after_mib": bench.status_kib("VmHWM") / 1024}


def gristmill_worker(args: argparse.Namespace, result: Path) -> None:
    import numpy as np

    from gristmill.selectors import Pool, select
    from gristmill.selectors.clustering import cluster_embeddings

    steps = _Steps()
    with bench.Meter() as meter:
        with steps("cluster"):
            clustered = cluster_embeddings(args.emb, args.work / "selection-clusters",
                                           k=args.k, spherical=True, niter=args.niter,
                                           seed=args.seed, device=args.device, overwrite=True)
            labels, _ = clustered.store.read_all()
            centroids = clustered.store.centroids()
        vectors = np.load(args.data, mmap_mode="r")
        with steps("pool"):
            pool = Pool.from_arrays(vectors, labels=labels, centroids=centroids)
        with steps("semdedup"):
            dedup = select("semdedup", pool, None, seed=args.seed, eps=args.eps)
        kept = dedup.selected
        with steps("dbp pool"):
            pool2 = Pool.from_arrays(vectors[kept], labels=labels[kept], centroids=centroids)
        with steps("dbp"):
            pruned = select("dbp", pool2, args.dbp_budget, seed=args.seed, tau=args.tau)
    np.save(args.work / "selection-labels.npy", labels)
    np.save(args.work / "selection-centroids.npy", centroids)
    np.save(args.work / "selection-semdedup-kept.npy", kept)
    m = clustered.store.manifest
    shutil.rmtree(clustered.store.path, ignore_errors=True)
    payload = {"contender": "gristmill", "rows": args.rows, **meter.report(),
               "steps": steps.done, "k": m["k"], "k_rule": m["k_rule"],
               "train_rows": m["train_sample_rows"], "cluster_device": m["device"],
               "cluster_sizes": m["size_stats"], "cluster_mean_inertia": m["mean_inertia"],
               "semdedup": dedup.stats, "semdedup_kept": int(len(kept)),
               "dbp_kept": int(len(pruned.selected)), "dbp_params": pruned.params}
    result.write_text(json.dumps(payload), encoding="utf-8")


def _naive_device(device: str) -> str:
    import torch

    return "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"


def _naive_semdedup(x: Any, labels: Any, centroids: Any, eps: float, max_bytes: int,
                    device: str) -> tuple[Any, Any, list[tuple[int, int]]]:
    """The reference's per-cluster dense pass: (removed (n,) bool, covered (n,) bool, skipped)."""
    import numpy as np
    import torch

    removed = np.zeros(len(x), dtype=bool)
    covered = np.zeros(len(x), dtype=bool)
    skipped: list[tuple[int, int]] = []
    for c in range(len(centroids)):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            continue
        if len(idx) * len(idx) * 4 > max_bytes:
            skipped.append((c, len(idx)))
            continue
        emb = x[idx]
        order = np.lexsort((idx, emb @ centroids[c]))  # keep_hard: farthest first
        reps = torch.from_numpy(emb[order]).to(device)
        sim = reps @ reps.T
        sim.fill_diagonal_(0.0)
        triu = torch.triu(sim, diagonal=1)
        m_j = torch.max(triu, dim=0)[0].cpu().numpy()
        removed[idx[order]] = m_j > 1 - eps
        covered[idx] = True
    return removed, covered, skipped


def naive_worker(args: argparse.Namespace, result: Path) -> None:
    import numpy as np

    x = np.load(args.data)  # in RAM before timing, as the reference holds its embeddings
    labels = np.load(args.work / "selection-labels.npy")
    centroids = np.load(args.work / "selection-centroids.npy")
    device = _naive_device(args.device)
    with bench.Meter() as meter:
        removed, covered, skipped = _naive_semdedup(x, labels, centroids, args.eps,
                                                    int(args.naive_max_gib * GIB), device)
    gristmill_removed = np.ones(len(x), dtype=bool)
    gristmill_removed[np.load(args.work / "selection-semdedup-kept.npy")] = False
    differ = covered & (removed != gristmill_removed)
    payload = {"contender": "naive", "rows": args.rows, **meter.report(), "device": device,
               "max_gib": args.naive_max_gib,
               "removed": int(removed.sum()), "covered_rows": int(covered.sum()),
               "skipped_clusters": len(skipped),
               "skipped_rows": int(sum(size for _, size in skipped)),
               "largest_skipped": max((size for _, size in skipped), default=0),
               "disagreements": int(differ.sum()),
               "only_gristmill_removed": int((differ & gristmill_removed).sum()),
               "only_naive_removed": int((differ & removed).sum())}
    result.write_text(json.dumps(payload), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Parent


def _worker_argv(name: str, args: argparse.Namespace, data: dict[str, Any]) -> list[str]:
    return ["--worker", name, "--data", data["path"], "--emb", data["embeddings"],
            "--k", str(args.k), "--niter", str(args.niter), "--device", args.device,
            "--eps", repr(args.eps), "--dbp-budget", args.dbp_budget, "--tau", repr(args.tau),
            "--naive-max-gib", repr(args.naive_max_gib), *bench.data_argv(args)]


def run_contender(name: str, args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    load = os.getloadavg()[0]
    payload = bench.run_child(SCRIPT, _worker_argv(name, args, data),
                              args.work / f"selection-{name}.json", f"{name} run")
    payload["load_avg_1min_before"] = load
    bench.check_run(name, payload)
    return payload


def _selection_seconds(run: dict[str, Any]) -> float:
    return sum(s["seconds"] for name, s in run["steps"].items() if name != "cluster")


def _print_tables(g: dict[str, Any] | None, n: dict[str, Any] | None, title: str) -> Any:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 130))
    if g is not None:
        table = Table(title=f"{title}: gristmill steps")
        for name in ("step", "seconds", "CPU s", "k rows/s", "VmHWM after MiB"):
            table.add_column(name, justify="left" if name == "step" else "right")
        for name, s in g["steps"].items():
            table.add_row(name, f"{s['seconds']:.1f}", f"{s['cpu_seconds']:.1f}",
                          f"{g['rows'] / s['seconds'] / 1000:.1f}",
                          f"{s['vm_hwm_after_mib']:.0f}")
        cpu = sum(s["cpu_seconds"] for name, s in g["steps"].items() if name != "cluster")
        table.add_row("selection (2-5)", f"{_selection_seconds(g):.1f}", f"{cpu:.1f}", "", "")
        table.add_row("end to end", f"{g['seconds']:.1f}", f"{g['cpu_seconds']:.1f}",
                      f"{g['rows'] / g['seconds'] / 1000:.1f}", f"{g['vm_hwm_mib']:.0f}")
        console.print(table)
        sizes = g["cluster_sizes"]
        console.print(
            f"k={g['k']} ({g['k_rule']}), trained on {g['train_rows']:,} rows, "
            f"{g['cluster_device']}; "
            f"cluster sizes min {sizes['min']:,} / median {sizes['p50']:,} / max {sizes['max']:,}"
            f", {sizes['empty']} empty; semdedup kept {g['semdedup_kept']:,} of {g['rows']:,} "
            f"({g['semdedup_kept'] / g['rows']:.1%}), dbp kept {g['dbp_kept']:,}; peak RSS "
            f"{g['peak_rss_mib']:.0f} MiB, peak anon RSS {g['peak_anon_rss_mib']:.0f} MiB, "
            f"other processes {g['other_cpu_seconds']:.1f} CPU s")
    if n is not None:
        console.print(
            f"naive SemDeDup ({n['device']}): {n['seconds']:.1f} s, {n['cpu_seconds']:.1f} CPU s,"
            f" peak RSS {n['peak_rss_mib']:.0f} MiB, removed {n['removed']:,} rows; skipped "
            f"{n['skipped_clusters']} clusters ({n['skipped_rows']:,} rows, largest "
            f"{n['largest_skipped']:,}) over the {n['max_gib']:g} GiB dense limit; "
            f"disagreements with gristmill over {n['covered_rows']:,} rows: "
            f"{n['disagreements']} (only gristmill removed {n['only_gristmill_removed']}, only "
            f"naive removed {n['only_naive_removed']})")
    return console


def _verdict(g: dict[str, Any] | None, n: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    out: dict[str, Any] = {}
    if g is not None:
        selection = _selection_seconds(g)
        out["seconds"] = {"selection": selection, "end_to_end": g["seconds"],
                          "met": selection <= GOAL_SECONDS,
                          "text": f"SemDeDup + DBP {selection:.1f} s <= {GOAL_SECONDS:g} s "
                                  f"(end to end with clustering {g['seconds']:.1f} s)"}
    if g is not None and n is not None:
        ours = g["steps"]["semdedup"]["seconds"]
        speedup = n["seconds"] / ours
        out["naive"] = {"disagreements": n["disagreements"], "speedup": speedup,
                        "met": n["disagreements"] == 0,
                        "text": f"0 disagreements with naive SemDeDup ({n['disagreements']}; "
                                f"semdedup step {ours:.1f} s vs naive {n['seconds']:.1f} s: "
                                f"{speedup:.2f}x)"}
    if not out:
        return out, "goals: n/a"
    met = sum(v["met"] for v in out.values())
    parts = "; ".join(f"{v['text']}: {'MET' if v['met'] else 'NOT MET'}" for v in out.values())
    return out, f"goals {met}/{len(out)} met: {parts}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_data_arguments(parser)
    parser.add_argument("--k", default="auto", help="clusters, or auto (default: about "
                        "sqrt(rows/2))")
    parser.add_argument("--niter", type=int, default=20, help="k-means iterations (default 20)")
    parser.add_argument("--eps", type=float, default=0.05, help="SemDeDup eps (default 0.05)")
    parser.add_argument("--dbp-budget", default="0.5",
                        help="DBP budget: fraction of SemDeDup's survivors or a row count "
                             "(default 0.5)")
    parser.add_argument("--tau", type=float, default=0.5, help="DBP temperature (default 0.5)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu or cuda[:N]: clustering, and the naive peer's torch")
    parser.add_argument("--naive-max-gib", type=float, default=2.0,
                        help="the naive peer skips clusters whose dense matrix exceeds this")
    parser.add_argument("--skip-naive", action="store_true", help="run gristmill only")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each; fastest kept")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    for hidden in ("--worker", "--data", "--emb", "--result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    if args.worker:
        worker = {"prepare": bench.prepare_worker, "gristmill": gristmill_worker,
                  "naive": naive_worker}[args.worker]
        worker(args, Path(args.result))
        return
    bench.check_data_arguments(parser, args)
    if args.niter < 1 or args.repeats < 1 or not 0 < args.eps < 2:
        parser.error("--niter and --repeats must be >= 1, --eps in (0, 2)")

    mach = bench.machine()
    info = bench.prepare_data(args, SCRIPT)
    bench.print_setup(info, mach)
    print(f"k={args.k}, niter={args.niter}, eps={args.eps}, dbp budget {args.dbp_budget}, "
          f"tau={args.tau}, seed={args.seed}, device {args.device}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"gristmill": [], "naive": []}
    for repeat in range(args.repeats):
        # gristmill first: the naive peer reads the clusters it wrote.
        for name in ("gristmill",) if args.skip_naive else ("gristmill", "naive"):
            run = run_contender(name, args, info["data"])
            print(f"run {repeat + 1}/{args.repeats} {name}: {run['seconds']:.1f} s, peak RSS "
                  f"{run['peak_rss_mib']:.0f} MiB, other processes "
                  f"{run['other_cpu_seconds']:.1f} CPU s (load average before: "
                  f"{run['load_avg_1min_before']:.2f})", flush=True)
            runs[name].append(run)

    best = {name: min(rs, key=lambda r: r["seconds"]) for name, rs in runs.items() if rs}
    title = (f"selection: {args.rows:,} x {args.dim}, SemDeDup eps={args.eps} then DBP "
             f"{args.dbp_budget} (fastest of {args.repeats})")
    console = _print_tables(best.get("gristmill"), best.get("naive"), title)
    goals, line = _verdict(best.get("gristmill"), best.get("naive"))
    console.print(line)
    bench.write_report(args.json, {
        "benchmark": "selection", "machine": mach, **info,
        "settings": {"k": args.k, "niter": args.niter, "eps": args.eps,
                     "dbp_budget": args.dbp_budget, "tau": args.tau, "seed": args.seed,
                     "device": args.device, "naive_max_gib": args.naive_max_gib},
        "results": {name: {**r, "runs": [x["seconds"] for x in runs[name]]}
                    for name, r in best.items()},
        "goals": goals, "verdict": line})


if __name__ == "__main__":
    main()
