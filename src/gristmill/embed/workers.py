"""Spread shard jobs over devices: one worker per device, the same loop on one CPU or 8 GPUs.

With one device the worker loop runs in this process. With several (`--devices 0,1,2,3`)
each device gets a spawned process that loads its own copy of the model and pulls shard jobs
from a shared queue, so a slow shard never leaves the other GPUs idle. Workers report batches
(for the progress bar), finished shards and errors through a queue; a worker that dies without
reporting (OOM-killed, segfault) stops the run with its exit code.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from collections.abc import Callable, Iterable
from typing import Any

import gristmill.errors as errors
from gristmill.embed.engine import Encoder, OnBatch
from gristmill.embed.model import ModelSpec
from gristmill.embed.shards import ShardJob, embed_shard

OnDone = Callable[[int, dict[str, Any]], None]


def run_jobs(spec: ModelSpec, jobs: list[ShardJob], *, devices: list[str], dtype: str,
             batch_tokens: int | None, chunk_rows: int, compile_model: bool,
             on_batch: OnBatch, on_done: OnDone) -> None:
    """Embed every job on `devices`; call `on_done(job index, record)` as shards finish."""
    options = {"dtype": dtype, "batch_tokens": batch_tokens, "chunk_rows": chunk_rows,
               "compile_model": compile_model}
    if len(devices) == 1 or len(jobs) <= 1:
        _work(spec, devices[0], options, iter(jobs), _direct(on_batch, on_done))
    else:
        _run_processes(spec, jobs, devices[:len(jobs)], options, on_batch, on_done)


def _work(spec: ModelSpec, device: str, options: dict[str, Any], jobs: Iterable[ShardJob],
          emit: Callable[..., None]) -> None:
    """The worker loop: load the model once, then embed shard after shard."""
    encoder = Encoder(spec, device=device, dtype=options["dtype"],
                      compile_model=options["compile_model"])
    for job in jobs:
        record = embed_shard(encoder, job, batch_tokens=options["batch_tokens"],
                             chunk_rows=options["chunk_rows"],
                             on_batch=lambda docs, tokens: emit("batch", docs, tokens))
        emit("done", job.index, record)


def _direct(on_batch: OnBatch, on_done: OnDone) -> Callable[..., None]:
    def emit(kind: str, *args: Any) -> None:
        (on_batch if kind == "batch" else on_done)(*args)

    return emit


def _worker_main(spec: ModelSpec, device: str, options: dict[str, Any], threads: int,
                 jobs: Any, events: Any) -> None:
    """Entry point of a spawned worker process."""
    import torch

    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))

    def pull() -> Iterable[ShardJob]:
        while (job := jobs.get()) is not None:
            yield job

    try:
        _work(spec, device, options, pull(), lambda *event: events.put(event))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which re-raises
        events.put(("error", type(exc).__name__, f"[{device}] {exc}"))
        return
    events.put(("exit", device))


def _run_processes(spec: ModelSpec, jobs: list[ShardJob], devices: list[str],
                   options: dict[str, Any], on_batch: OnBatch, on_done: OnDone) -> None:
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    job_queue, events = ctx.Queue(), ctx.Queue()
    for job in jobs:
        job_queue.put(job)
    for _ in devices:
        job_queue.put(None)
    cpu_workers = sum(d == "cpu" for d in devices)
    threads = max(1, (os.cpu_count() or 1) // max(cpu_workers, 1))
    workers = [ctx.Process(target=_worker_main, name=f"gristmill-embed-{d}", daemon=True,
                           args=(spec, d, options, threads, job_queue, events)) for d in devices]
    for worker in workers:
        worker.start()
    try:
        _collect(workers, events, on_batch, on_done)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
            worker.join(timeout=10)


def _collect(workers: list[Any], events: Any, on_batch: OnBatch, on_done: OnDone) -> None:
    running = len(workers)
    while running:
        try:
            kind, *args = events.get(timeout=1.0)
        except queue.Empty:
            dead = [w for w in workers if w.exitcode not in (None, 0)]
            if dead:
                raise errors.GristmillError(
                    f"embedding worker {dead[0].name} died with exit code {dead[0].exitcode} "
                    "(killed for memory?); re-run to resume from the finished shards") from None
            continue
        if kind == "batch":
            on_batch(*args)
        elif kind == "done":
            on_done(*args)
        elif kind == "exit":
            running -= 1
        else:
            error_type = getattr(errors, args[0], None)
            if not (isinstance(error_type, type) and issubclass(error_type, Exception)):
                error_type = RuntimeError
            raise error_type(args[1])
