"""`gristmill demo` on the whole committed demo corpus: outputs, summary, and a rerun that
reuses what is up to date (the curate flow's cache). Embedding the 5,014 documents takes ~2.5
minutes on 2 cores."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

from typer.testing import CliRunner

from gristmill import open_store
from gristmill.cli import app
from gristmill.demo import DEMO_DOMAINS, demo_corpus_path
from gristmill.storage.clusters import ClusterStore
from gristmill.storage.embeddings import EmbeddingStore
from gristmill.storage.selection import read_selection
from gristmill.storage.tokens import TokenStore

runner = CliRunner()


@dataclass
class Ran:
    exit_code: int
    output: str


def run_demo_cli(out) -> Ran:
    """`gristmill demo` in its own process, as a user runs it (Prefect's log handlers keep the
    first stream they see, which CliRunner closes after each in-process invocation)."""
    done = subprocess.run([sys.executable, "-m", "gristmill", "demo", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, check=False)
    return Ran(done.returncode, done.stdout + done.stderr)


def test_demo_corpus_is_committed_and_small():
    files = sorted(demo_corpus_path().glob("*.parquet"))
    assert {f.stem for f in files} == set(DEMO_DOMAINS)
    assert sum(f.stat().st_size for f in files) < 9 * 2**20


def test_demo_runs_end_to_end_and_reruns_up_to_date(tmp_path):
    out = tmp_path / "demo"
    first = run_demo_cli(out)
    assert first.exit_code == 0, first.output
    assert f"corpus: {out / 'corpus'} (written)" in " ".join(first.output.split())
    store = open_store(out / "corpus")
    assert set(store.domains) == set(DEMO_DOMAINS)
    assert 4000 <= store.num_rows <= 6000
    assert store.manifest["dropped"] == {"empty": 0, "bad_records": 0, "bad_files": 0}
    embeddings = EmbeddingStore.open(out / "embeddings")
    embeddings.check_corpus(store)
    assert embeddings.num_rows == store.num_rows and embeddings.dim == 384
    assert f"embeddings: {out / 'embeddings'} (written)" in " ".join(first.output.split())
    clusters = ClusterStore.open(out / "clusters")
    assert clusters.k == 50 and clusters.num_rows == store.num_rows  # sqrt(5014 / 2) = 50
    dedup = read_selection(out / "selections" / "01-semdedup")
    pruned = read_selection(out / "selections" / "02-dbp")
    assert 0 < len(dedup.rows) < store.num_rows
    assert len(pruned.rows) == round(0.5 * len(dedup.rows)) and set(pruned.rows) <= set(dedup.rows)
    tokens = TokenStore.open(out / "tokens")
    assert tokens.num_docs == len(pruned.rows) and tokens.vocab_size == 8192
    assert tokens.manifest["eos"]["appended"] is True
    assert tokens.manifest["lineage"][-1]["step"] == "tokenize"
    stream = json.loads((out / "stream" / "stats.json").read_text())
    # The scheduled epoch is the store's token count; the last document may run past it.
    assert tokens.num_tokens <= stream["tokens"] < tokens.num_tokens + 4096
    assert stream["efficiency"] >= 0.99
    assert (out / "stream" / "domain_mix.png").stat().st_size > 0
    assert "packing efficiency" in first.output
    manifest = (out / "corpus" / "manifest.json").read_bytes()
    selected = (out / "selections" / "02-dbp" / "manifest.json").read_bytes()
    emb_manifest = (out / "embeddings" / "manifest.json").read_bytes()
    second = run_demo_cli(out)
    assert second.exit_code == 0, second.output
    assert "(up to date)" in second.output
    assert (out / "corpus" / "manifest.json").read_bytes() == manifest
    assert (out / "embeddings" / "manifest.json").read_bytes() == emb_manifest
    assert (out / "selections" / "02-dbp" / "manifest.json").read_bytes() == selected
    assert "stream: " in second.output and "(up to date)" in second.output.split("stream:")[1]
    assert "curate flow tasks: 0 ran" in " ".join(second.output.split())
    assert "dbp: " in second.output
    assert "embeddings: " in second.output and "(up to date)" in second.output.split(
        "embeddings:")[1]
    info = json.loads(runner.invoke(app, ["info", str(out / "corpus"), "--json"]).output)
    assert info["rows"] == store.num_rows
    assert all(d["n_chars"]["max"] <= 2000 for d in info["domains"].values())
