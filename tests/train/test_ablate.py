"""`gristmill ablate` end to end on a tiny real corpus: real embeddings, FAISS clusters, BPE,
proxy training; outputs, resume, the per-selector budget meanings, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from gristmill.cli import app
from gristmill.errors import ConfigError, InputError
from gristmill.train.ablate import AblationConfig, parse_tokens, run_ablation
from gristmill.train.cells import holdout_split

TINY = {"tokens": 6000, "seq_len": 128, "micro_batch_rows": 4, "vocab_size": 400,
        "model": "cpu", "model_overrides": {"d_model": 32, "n_layers": 1, "n_heads": 2,
                                            "d_ff": 64},
        "lr": 3e-3, "eval_points": 2, "cpu_threads": 1}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory,
           demo_records: list[dict[str, Any]]) -> dict[str, Path]:
    """30 demo documents from each of 3 domains, embedded (64 tokens) and clustered (k=4)."""
    from gristmill import ingest
    from gristmill.embed import embed_store
    from gristmill.selectors.clustering import cluster_embeddings

    root = tmp_path_factory.mktemp("ablate-stores")
    domains = sorted({r["domain"] for r in demo_records})[:3]
    picked = [r for d in domains for r in [x for x in demo_records if x["domain"] == d][:30]]
    source = root / "input.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": r["id"], "text": r["text"],
                                          "domain": r["domain"]} for r in picked]), source)
    corpus = ingest([source], root / "corpus", domain_field="domain", id_field="id",
                    progress=False)
    emb = embed_store(corpus.path, root / "emb", max_tokens=64, progress=False)
    cluster_embeddings(emb.store.path, root / "clusters", k=4, seed=0)
    return {"corpus": corpus.path, "embeddings": emb.store.path,
            "clusters": root / "clusters"}


def config(stores: dict[str, Path], out: Path, **kw: Any) -> AblationConfig:
    data = {**TINY, "corpus": str(stores["corpus"]), "embeddings": str(stores["embeddings"]),
            "clusters": str(stores["clusters"]), "out": str(out), **kw}
    return AblationConfig.from_mapping(data)


def test_two_cells_end_to_end_then_resume(stores, tmp_path):
    out = tmp_path / "abl"
    cfg = config(stores, out, selectors="random", budgets="0.5", seeds="0")
    result = run_ablation(cfg, progress=False)
    # random at 1.0 is always included: the full-data reference.
    assert sorted(result.ran) == ["random-b0.5-s0", "random-b1-s0"] and not result.skipped
    for name in ("results.parquet", "curves.parquet", "results.md", "ablation.png"):
        assert (out / name).stat().st_size > 0, name
    table = pq.read_table(out / "results.parquet")
    assert table.schema.field("selector").type == pa.string()
    assert table.schema.field("budget").type == pa.float64()
    assert table.schema.field("seed").type == pa.int64()
    rows = {(r["selector"], r["budget"]): r for r in table.to_pylist()}
    domains = [c[len("eval_loss_"):] for c in table.column_names if c.startswith("eval_loss_")]
    assert len(domains) == 3
    for row in rows.values():
        assert row["tokens"] == 6000 and row["steps"] > 0 and row["wall_s"] > 0
        assert 0 < row["eval_loss"] < 7  # observed ~5.9 (ln 400 = 6.0)
        assert all(row[f"eval_loss_{d}"] > 0 for d in domains)
    # The held-out split (5 per 30-document domain) never enters the training pool.
    assert rows[("random", 1.0)]["selected_docs"] == 75
    assert rows[("random", 0.5)]["selected_docs"] == 38
    curves = pq.read_table(out / "curves.parquet").to_pylist()
    assert {c["kind"] for c in curves} == {"train", "eval"}
    assert max(c["tokens"] for c in curves if c["kind"] == "eval") == 6000
    text = (out / "results.md").read_text()
    assert "| random | 0.5 | 1 |" in text and "| random | 1 | 1 |" in text
    png = (out / "ablation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # Resume: nothing re-runs, and the results are the same.
    again = run_ablation(cfg, progress=False)
    assert again.ran == [] and sorted(again.skipped) == sorted(result.ran)
    assert again.results.to_pylist() == table.to_pylist()
    # Another setup in the same directory is refused, naming what changed.
    with pytest.raises(ConfigError, match="differs in: tokens"):
        run_ablation(config(stores, out, selectors="random", budgets="0.5", seeds="0",
                            tokens=7000), progress=False)


def test_feedback_and_filter_selectors(stores, tmp_path):
    """kmq refines over 3 rounds inside the budget; semdedup filters then samples down;
    colm and hard-batch read the budget as the share of each large batch they keep."""
    out = tmp_path / "abl"
    cfg = config(stores, out, selectors="kmq,semdedup,colm,hard-batch", budgets="0.4",
                 seeds="1", tokens=4000)
    result = run_ablation(cfg, progress=False)
    rows = {r["selector"]: r for r in result.results.to_pylist()}
    assert set(rows) == {"random", "kmq", "semdedup", "colm", "hard-batch"}
    assert rows["kmq"]["selected_docs"] == 30  # round(0.4 * 75), over 3 rounds
    assert rows["semdedup"]["selected_docs"] <= 30
    for name in ("colm", "hard-batch"):
        # Trained on exactly the token budget, but read more of the stream to choose it.
        assert rows[name]["tokens"] == 4000 and rows[name]["tokens_read"] > 4000, name
    assert all(r["tokens"] == 4000 for r in rows.values())
    kmq_evals = [c for c in pq.read_table(out / "curves.parquet").to_pylist()
                 if c["selector"] == "kmq" and c["kind"] == "eval"]
    assert kmq_evals and kmq_evals[-1]["tokens"] == 4000


def test_extra_comparisons(stores, tmp_path):
    out = tmp_path / "abl"
    cfg = config(stores, out, selectors="random", budgets="1.0", seeds="0",
                 upsample="math", adaptive_batch=True, max_batch_factor=4, norm_test_eta=0.5)
    result = run_ablation(cfg, progress=False)
    assert sorted(result.ran) == ["random-b1-s0", "random-b1-s0-adaptive",
                                  "random-b1-s0-upsample"]
    text = (out / "results.md").read_text()
    assert "## Domain upsampling at the end of training: math" in text
    assert "| constant | 1 |" in text and "| upsample | 1 |" in text
    assert "## Fixed vs adaptive batch size" in text
    assert "| fixed | 1 |" in text and "| adaptive | 1 |" in text


def test_bad_input_is_refused_before_anything_is_written(stores, tmp_path):
    out = tmp_path / "abl"
    with pytest.raises(ConfigError, match=r"outside \(0, 1\]"):
        config(stores, out, budgets="0.3,1.5")
    with pytest.raises(ConfigError, match="smaller than one batch"):
        config(stores, out, tokens="100")
    with pytest.raises(ConfigError, match="need a target set"):
        config(stores, out, selectors="rds")
    no_clusters = config(stores, out, selectors="kmq,dbp")
    no_clusters.clusters = None
    with pytest.raises(ConfigError, match="gristmill cluster"):
        run_ablation(no_clusters, progress=False)
    with pytest.raises(InputError, match="too few to hold out"):
        run_ablation(config(stores, out, eval_min_docs=20), progress=False)
    with pytest.raises(ConfigError, match="not a domain"):
        run_ablation(config(stores, out, upsample="nope"), progress=False)
    assert not out.exists()


def test_parse_tokens_and_the_holdout_rule():
    assert parse_tokens("5M") == 5_000_000 and parse_tokens("500k") == 500_000
    assert parse_tokens("1.5B") == 1_500_000_000 and parse_tokens(1234) == 1234
    for bad in ("5X", "-3", "1.5", ""):
        with pytest.raises(ConfigError, match="--tokens"):
            parse_tokens(bad)
    import numpy as np

    domains = np.repeat(np.arange(3), [3000, 400, 60])
    held = holdout_split(domains, ["a", "b", "c"], fraction=0.1, max_docs=200, min_docs=5)
    counts = np.bincount(domains[held], minlength=3).tolist()
    assert counts == [200, 40, 6]  # min(10 %, 200), and at least 5


def test_cli_reports_bad_budgets(stores, tmp_path):
    result = CliRunner().invoke(app, ["ablate", "--corpus", str(stores["corpus"]),
                                      "--embeddings", str(stores["embeddings"]),
                                      "--budgets", "0,0.5", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "outside (0, 1]" in result.output
    assert not (tmp_path / "x").exists()


def test_cli_config_file(stores, tmp_path):
    spec = {**TINY, "corpus": str(stores["corpus"]), "embeddings": str(stores["embeddings"]),
            "selectors": ["random"], "budgets": [1.0], "seeds": [0], "tokens": "4k"}
    path = tmp_path / "ablation.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    result = CliRunner().invoke(app, ["ablate", "--config", str(path), "--out",
                                      str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "| random | 1 | 1 |" in result.output
    assert pq.read_table(tmp_path / "o" / "results.parquet").num_rows == 1
