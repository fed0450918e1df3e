"""Crash safety: a `gristmill embed` process killed mid-shard (SIGKILL) resumes to output
byte-identical to an uninterrupted run, and refuses to resume over a changed corpus."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gristmill.embed import embed_store
from gristmill.errors import ConfigError, InputError


@pytest.fixture
def long_corpus(demo_records: list[dict[str, Any]], corpus_writer) -> Path:
    """6 shards of 10 long documents (~1 s of CPU embedding per shard)."""
    longest = sorted(demo_records, key=lambda r: -len(r["text"]))[:60]
    return corpus_writer(longest, rows_per_shard=10)


def kill_after_first_shard(corpus: Path, out: Path) -> dict[str, Any]:
    """Start `gristmill embed` in a process, SIGKILL it once a shard is committed."""
    progress = out.parent / f".{out.name}.partial" / "progress.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "gristmill", "embed", str(corpus), "--out", str(out),
         "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if progress.is_file() and json.loads(progress.read_text())["shards"]:
                break
            time.sleep(0.02)
        assert process.poll() is None, process.communicate()
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    return json.loads(progress.read_text())


def test_killed_run_resumes_to_byte_identical_output(long_corpus, tmp_path):
    out = tmp_path / "emb"
    saved = kill_after_first_shard(long_corpus, out)
    assert not out.exists()  # nothing published by a killed run
    finished = len(saved["shards"])
    assert 1 <= finished < 6
    with pytest.raises(ConfigError, match="unfinished run with other settings .*'mean'"):
        embed_store(long_corpus, out, device="cpu", pooling="cls")
    resumed = embed_store(long_corpus, out, device="cpu", overwrite=True)  # same settings
    assert resumed.status == "resumed" and resumed.docs == 60 - 10 * finished
    reference = embed_store(long_corpus, tmp_path / "reference", device="cpu").store
    for shard in reference.shards:
        assert (out / shard.path.name).read_bytes() == shard.path.read_bytes()
    assert not list(tmp_path.glob(".emb*"))
    assert resumed.store.manifest["fingerprint"] == reference.manifest["fingerprint"]
    assert np.isfinite(resumed.store.to_numpy()).all()


def test_resume_over_a_changed_corpus_is_refused(long_corpus, tmp_path, demo_records,
                                                 corpus_writer):
    out = tmp_path / "emb"
    kill_after_first_shard(long_corpus, out)
    # A new snapshot lands at the same path while the run is interrupted.
    from gristmill import ingest

    source = tmp_path / "corpus-input.parquet"
    ingest([source], long_corpus, domain_field="domain", id_field="id", rows_per_shard=12,
           overwrite=True, progress=False)
    with pytest.raises(InputError, match="changed after embedding began .* will not be mixed"):
        embed_store(long_corpus, out, device="cpu")
    assert not out.exists()
